"""Extract one path of an image's merged filesystem from its layer tars, as they stream.

Layer: file I/O, synchronous (callers run it in a worker thread); no network, no anyio.

Layers are applied in order into a private staging directory; only entries at or under the
wanted path are written, so the whole image never lands on disk. OCI whiteouts (``.wh.NAME``)
and opaque directories (``.wh..wh..opq``) hide what lower layers put there, never what the
same layer adds. Symlinks and hardlinks are recreated, never followed.

Whatever a tar says, nothing is written outside the staging directory:

- absolute names and ``..`` components are refused (``InvalidContent``);
- an entry whose parent path passes through a symlink is refused (``evil -> /`` followed by
  ``evil/etc/passwd``); files are created with ``O_EXCL | O_NOFOLLOW`` after whatever was at
  their name is removed, so no write goes through a link;
- hardlinks must point at a file already extracted under the staging directory.

The tar is parsed here from pushed chunks (``feed``), not pulled by ``tarfile``: the bytes
arrive from the verify pipeline. Headers are decoded by ``tarfile.TarInfo.frombuf``; PAX
(``x``) and GNU long-name (``L``/``K``) records are applied to the entry that follows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from puller.errors import InvalidContent, NotFound, UsageError

BLOCK = 512
MAX_META = 1 << 20  # a PAX record or GNU long name is a path, not a payload
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_FILE_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_META_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


def normalize_member(name: str, subject: str) -> str:
    """A tar member name as a relative path with no ``.``/``..``; '' is the root itself."""
    if name.startswith("/"):
        raise InvalidContent(
            f"{subject}: tar entry {name!r} has an absolute path",
            subject=subject,
            expected="a relative path",
            actual=name,
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidContent(
            f"{subject}: tar entry {name!r} climbs out with '..'",
            subject=subject,
            expected="a path without '..'",
            actual=name,
        )
    return "/".join(parts)


def normalize_source(path: str) -> str:
    """The path asked for on the command line (``/etc/app``) as a relative member name."""
    if not path.startswith("/"):
        raise UsageError(f"the path in the image must be absolute: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"the path in the image must not contain '..': {path!r}")
    return "/".join(parts)


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _ancestors(rel: str) -> list[str]:
    """``a/b/c`` -> ``['a', 'a/b']``."""
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _parse_pax(data: bytes, subject: str) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records (POSIX pax extended header)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise InvalidContent(f"{subject}: malformed pax header") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or space < 0 or not record.endswith(b"\n") or b"=" not in record:
            raise InvalidContent(f"{subject}: malformed pax header")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


@dataclass(slots=True)
class _Entry:
    name: str
    kind: bytes
    size: int
    mode: int
    mtime: float
    linkname: str


@dataclass(slots=True)
class ExtractStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    skipped_devices: int = 0
    bytes_written: int = 0
    unresolved_hardlinks: list[str] = field(default_factory=list)


class Extraction:
    """The merged view of one source path across layers, kept in a staging directory."""

    def __init__(self, staging: Path, source: str) -> None:
        self.staging = staging  # a private, empty directory the caller created
        self.source = source  # normalised: '' for the whole root filesystem
        self.stats = ExtractStats()
        self.ancestor_links: dict[str, str] = {}  # symlinks met on the way to `source`
        self._dir_meta: dict[str, tuple[int, float]] = {}
        self._created: set[str] = set()  # paths this layer put there
        self.subject = "layer"
        self._reset_parser()

    # -- layers -----------------------------------------------------------------------------

    def begin_layer(self, subject: str) -> None:
        self.subject = subject
        self._created = set()
        self._reset_parser()

    def restart_layer(self) -> None:
        """The layer is sent again from byte 0: parse afresh; what it wrote is rewritten."""
        self._close_file()
        self._reset_parser()

    def end_layer(self) -> None:
        if self._state not in ("header", "end") or self._buf.strip(b"\0"):
            raise InvalidContent(
                f"{self.subject}: tar stream ends inside an entry",
                subject=self.subject,
                expected="a complete tar archive",
                actual="a truncated tar archive",
            )
        self._created = set()

    def discard(self) -> None:
        self._close_file()

    # -- the push parser --------------------------------------------------------------------

    def _reset_parser(self) -> None:
        self._buf = bytearray()
        self._state = "header"  # header | data | meta | end
        self._entry: _Entry | None = None
        self._remaining = 0  # data bytes left in the current entry
        self._padding = 0
        self._fd: int | None = None
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._meta_kind = b""

    def feed(self, data: bytes) -> None:
        """More of the layer's uncompressed tar, in any chunking."""
        if self._state == "end":
            return  # padding after the end-of-archive blocks
        self._buf += data
        while True:
            if self._state == "header":
                if len(self._buf) < BLOCK:
                    return
                block = bytes(self._buf[:BLOCK])
                del self._buf[:BLOCK]
                if block == b"\0" * BLOCK:
                    # End of archive (two zero blocks by the standard; GNU tar stops at one).
                    self._state = "end"
                    self._buf.clear()
                    return
                self._start(block)
            elif self._state == "meta":
                need = self._remaining + self._padding
                if len(self._buf) < need:
                    return
                payload = bytes(self._buf[: self._remaining])
                del self._buf[:need]
                self._take_meta(payload)
                self._state = "header"
            elif self._state == "data":
                if self._remaining:
                    take = min(self._remaining, len(self._buf))
                    if take == 0:
                        return
                    if self._fd is not None:
                        os.write(self._fd, bytes(self._buf[:take]))
                        self.stats.bytes_written += take
                    del self._buf[:take]
                    self._remaining -= take
                    if self._remaining:
                        return
                    self._finish_file()
                take = min(self._padding, len(self._buf))
                del self._buf[:take]
                self._padding -= take
                if self._padding:
                    return
                self._state = "header"
            else:
                return

    def _start(self, block: bytes) -> None:
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise InvalidContent(f"{self.subject}: corrupt tar header: {exc}") from exc
        size = info.size
        if "size" in self._pax:
            try:
                size = int(self._pax["size"])
            except ValueError:
                raise InvalidContent(f"{self.subject}: bad pax size") from None
        if size < 0:
            raise InvalidContent(f"{self.subject}: negative tar entry size")
        self._remaining = size
        self._padding = -size % BLOCK
        kind = info.type
        if kind in _META_TYPES:
            if size > MAX_META:
                raise InvalidContent(f"{self.subject}: tar metadata record of {size} bytes")
            self._meta_kind = kind
            self._state = "meta"
            return
        name = self._pax.get("path") or self._long_name or info.name
        linkname = self._pax.get("linkpath") or self._long_link or info.linkname
        mtime: float = info.mtime
        if "mtime" in self._pax:
            with contextlib.suppress(ValueError):
                mtime = float(self._pax["mtime"])
        self._pax, self._long_name, self._long_link = {}, None, None
        entry = _Entry(name, kind, size, info.mode, mtime, linkname)
        self._entry = entry
        self._state = "data"
        self._apply(entry)

    def _take_meta(self, payload: bytes) -> None:
        if self._meta_kind == tarfile.XHDTYPE:
            self._pax.update(_parse_pax(payload, self.subject))
        elif self._meta_kind == tarfile.GNUTYPE_LONGNAME:
            self._long_name = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif self._meta_kind == tarfile.GNUTYPE_LONGLINK:
            self._long_link = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
        # Global pax headers (g) carry nothing we apply.

    # -- applying entries -------------------------------------------------------------------

    def _wanted(self, rel: str) -> bool:
        return not self.source or rel == self.source or rel.startswith(self.source + "/")

    def _above_source(self, rel: str) -> bool:
        """True for a strict ancestor of the source path (``etc`` for ``etc/app``)."""
        return bool(self.source) and self.source.startswith(rel + "/")

    def _apply(self, entry: _Entry) -> None:
        rel = normalize_member(entry.name, self.subject)
        if not rel:
            return  # "./": the root directory itself
        base = rel.rpartition("/")[2]
        if base.startswith(WHITEOUT):
            self._whiteout(rel, base)
            return
        if self._above_source(rel):
            if entry.kind == tarfile.SYMTYPE:
                self.ancestor_links[rel] = entry.linkname
            else:
                self.ancestor_links.pop(rel, None)
            if entry.kind != tarfile.DIRTYPE:
                # A file or link replaces the directory the source lived in.
                self._remove(self._inside(rel))
            return
        if not self._wanted(rel):
            return
        self._mark_created(rel)
        full = self._prepare(rel)
        kind = entry.kind
        if kind == tarfile.DIRTYPE:
            if full.is_symlink() or (full.exists() and not full.is_dir()):
                full.unlink()
            full.mkdir(mode=0o700, exist_ok=True)
            self._dir_meta[rel] = (entry.mode, entry.mtime)
            self.stats.directories += 1
        elif kind in _FILE_TYPES:
            self._remove(full)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(full, flags, 0o600)
            self.stats.files += 1
            if entry.size == 0:
                self._finish_file()
        elif kind == tarfile.SYMTYPE:
            self._remove(full)
            os.symlink(entry.linkname, full)
            self._set_mtime(full, entry.mtime)
            self.stats.symlinks += 1
        elif kind == tarfile.LNKTYPE:
            self._hardlink(rel, full, entry.linkname)
        else:
            self.stats.skipped_devices += 1  # devices and fifos need root; docker skips too

    def _finish_file(self) -> None:
        entry, fd = self._entry, self._fd
        self._fd = None
        if fd is None or entry is None:
            return
        try:
            os.fchmod(fd, entry.mode & 0o777)
        finally:
            os.close(fd)
        self._set_mtime(self.staging / normalize_member(entry.name, self.subject), entry.mtime)

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _hardlink(self, rel: str, full: Path, linkname: str) -> None:
        target_rel = normalize_member(linkname, self.subject)
        if not target_rel or not self._wanted(target_rel):
            # Its content is outside what we extract: nothing to link to.
            self.stats.unresolved_hardlinks.append(rel)
            return
        target = self._inside(target_rel)
        if not os.path.lexists(target) or (target.is_dir() and not target.is_symlink()):
            raise InvalidContent(
                f"{self.subject}: hardlink {rel!r} points at {linkname!r}, which is not "
                "an extracted file",
                subject=self.subject,
                expected="a hardlink to an earlier file",
                actual=linkname,
            )
        self._remove(full)
        os.link(target, full, follow_symlinks=False)
        self.stats.hardlinks += 1

    def _whiteout(self, rel: str, base: str) -> None:
        parent = _parent(rel)
        if base == OPAQUE:
            if self._wanted(parent) or self._above_source(parent) or not parent:
                self._hide_lower_children(parent)
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk and friends)
        target = f"{parent}/{base[len(WHITEOUT) :]}" if parent else base[len(WHITEOUT) :]
        target = normalize_member(target, self.subject)
        if target in self._created or not target:
            return  # a whiteout hides lower layers only
        if self._above_source(target):
            self.ancestor_links.pop(target, None)
        if self._wanted(target) or self._above_source(target):
            self._remove(self._inside(target))

    def _hide_lower_children(self, rel: str) -> None:
        directory = self._inside(rel) if rel else self.staging
        if directory.is_symlink() or not directory.is_dir():
            return
        for child in sorted(os.listdir(directory)):
            child_rel = f"{rel}/{child}" if rel else child
            path = directory / child
            if child_rel in self._created:
                if path.is_dir() and not path.is_symlink():
                    self._hide_lower_children(child_rel)
            else:
                self._remove(path)

    def _mark_created(self, rel: str) -> None:
        self._created.add(rel)
        self._created.update(_ancestors(rel))

    def _inside(self, rel: str) -> Path:
        """The staging path of ``rel``, refusing any route through a symlink."""
        path = self.staging
        for part in rel.split("/")[:-1]:
            path = path / part
            if path.is_symlink():
                raise InvalidContent(
                    f"{self.subject}: tar entry {rel!r} goes through the symlink "
                    f"{path.relative_to(self.staging)!s}",
                    subject=self.subject,
                    expected="a path without symlinks in it",
                    actual=rel,
                )
        return self.staging / rel

    def _prepare(self, rel: str) -> Path:
        """Create missing parent directories of ``rel``; return its staging path."""
        full = self._inside(rel)
        path = self.staging
        for part in rel.split("/")[:-1]:
            path = path / part
            if not path.exists():
                path.mkdir(mode=0o755)
            elif not path.is_dir():
                raise InvalidContent(
                    f"{self.subject}: tar entry {rel!r} needs a directory where "
                    f"{path.relative_to(self.staging)!s} is a file",
                    subject=self.subject,
                    expected="a directory",
                    actual="a file",
                )
        return full

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)

    @staticmethod
    def _set_mtime(path: Path, mtime: float) -> None:
        # A symlink's time cannot be set everywhere; it is cosmetic.
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    # -- the end ----------------------------------------------------------------------------

    def source_path(self) -> Path:
        return self.staging / self.source if self.source else self.staging

    def finalize(self) -> Path:
        """Apply directory modes and times (deepest first); return the extracted source."""
        found = self.source_path()
        if not os.path.lexists(found):
            hint = ""
            for link, target in sorted(self.ancestor_links.items()):
                hint = f" (/{link} is a symlink to {target} in the image: ask for that path)"
            raise NotFound(f"/{self.source}: no such file or directory in the image{hint}")
        for rel, (mode, mtime) in sorted(self._dir_meta.items(), key=lambda kv: -kv[0].count("/")):
            path = self.staging / rel
            if path.is_dir() and not path.is_symlink():
                # Keep the owner able to write: we, not root, own what we extract.
                os.chmod(path, (mode & 0o777) | stat.S_IRWXU)
                self._set_mtime(path, mtime)
        return found


def plan_destination(dest_text: str, source: str) -> Path:
    """docker cp's rule: into an existing directory, else under the new name ``DEST``."""
    dest = Path(dest_text)
    if dest.is_dir():
        if not source:
            raise UsageError(f"copying / needs a DEST that does not exist yet, not {dest_text!r}")
        return dest / source.rpartition("/")[2]
    if dest_text.endswith("/"):
        raise UsageError(f"destination directory {dest_text!r} does not exist")
    if not dest.parent.is_dir():
        raise UsageError(f"no such directory: {str(dest.parent)!r}")
    return dest


def make_staging(final: Path) -> Path:
    """A private temporary directory beside ``final``, so the last rename stays in one fs."""
    return Path(tempfile.mkdtemp(prefix=".puller-cp-", dir=final.parent))


def install(found: Path, final: Path) -> None:
    """Rename the extracted source into place: the only step that makes anything visible."""
    source_is_dir = found.is_dir() and not found.is_symlink()
    if final.is_dir() and not final.is_symlink():
        raise UsageError(f"{str(final)!r} already exists; puller cp does not merge directories")
    if os.path.lexists(final) and source_is_dir:
        raise UsageError(f"cannot copy a directory onto the file {str(final)!r}")
    os.replace(found, final)
