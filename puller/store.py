"""OCI image layouts on disk: ``--output DIR`` and the local content store (``--store``).

Layer: I/O (files). ``LayoutStore`` is a ``BlobSink``: each layer streams into a temporary
file next to its final place, in the same pass that verifies it, and is renamed to
``blobs/<alg>/<hex>`` only after its digest, size and diff_id checked out. Manifests and
configs are written only after verification; ``index.json`` names an image only once the
whole image verified. A failed pull leaves verified blobs and no name pointing at them.

What independent tools can read (skopeo 1.9, umoci 0.4 measured): ``index.json`` entries
must be OCI image manifests. So an image served as Docker schema2 is kept twice: its exact
manifest bytes as a blob (the digest the registry gave), and an OCI manifest naming the
same verified config and layers, which ``index.json`` points at. For an index, each
verified platform's manifest gets an ``index.json`` entry (with its platform); the index
bytes are kept as a blob, recorded in the entry's annotations, but not tagged, since the
layout does not hold the platforms that were not pulled.

On disk, next to the layout: ``pull-verify/layers/<alg>/<hex>.json`` records each stored
layer's diff_id and uncompressed size (so a later pull can skip it, and ``puller images``
can show sizes), and ``pull-verify/lock`` serialises updates of ``index.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiofiles
import anyio
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from puller import mediatypes as mt
from puller.digest import Digest, parse_digest
from puller.errors import IntegrityError, PullVerifyError, UsageError, write_failure
from puller.manifest import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    host_platform,
    load_json_object,
    parse_descriptor,
    parse_manifest,
)
from puller.reference import Reference, parse_reference
from puller.sink import BlobSink, BlobWriter
from puller.verify import Consumer, LayerVerdict, LayerVerifier

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
SOURCE_DIGEST = "io.pull-verify.source-digest"  # the digest the registry gave (index or image)
MANIFEST_DIGEST = "io.pull-verify.manifest-digest"  # the image manifest as served
UNCOMPRESSED_SIZE = "io.pull-verify.uncompressed-size"
LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'
SIDECAR = "pull-verify"
READ_CHUNK = 1 << 20
MAX_INDEX_BYTES = 64 << 20

# Docker schema2 layer types and their OCI spelling (same bytes, same compression).
_OCI_LAYER_TYPE = {
    mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
    mt.DOCKER_FOREIGN_LAYER_GZIP: mt.OCI_LAYER_NONDIST_GZIP,
}

RefNames = Literal["tag", "reference"]


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/pull-verify``, else ``~/.local/share/pull-verify``."""
    base = os.environ.get("XDG_DATA_HOME")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "pull-verify"


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()


def descriptor_json(
    desc: Descriptor, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "mediaType": desc.media_type,
        "digest": str(desc.digest),
        "size": desc.size,
    }
    if desc.urls:
        doc["urls"] = list(desc.urls)
    if desc.platform is not None:
        platform: dict[str, str] = {
            "architecture": desc.platform.architecture,
            "os": desc.platform.os,
        }
        if desc.platform.variant:
            platform["variant"] = desc.platform.variant
        if desc.platform.os_version:
            platform["os.version"] = desc.platform.os_version
        doc["platform"] = platform
    merged = {**desc.annotations, **(annotations or {})}
    if merged:
        doc["annotations"] = merged
    return doc


def oci_manifest_for(manifest: ImageManifest) -> bytes:
    """An OCI manifest naming the same verified config and layers as a Docker schema2 one."""
    layers = []
    for layer in manifest.layers:
        media_type = _OCI_LAYER_TYPE.get(layer.media_type, layer.media_type)
        layers.append(
            {
                "mediaType": media_type,
                "digest": str(layer.digest),
                "size": layer.size,
                **({"urls": list(layer.urls)} if layer.urls else {}),
            }
        )
    config = manifest.config
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(config.digest), "size": config.size},
        "layers": layers,
    }
    if manifest.annotations:
        doc["annotations"] = dict(manifest.annotations)
    return _dump(doc)


@dataclass(frozen=True, slots=True)
class LayerRecord:
    """What the store knows of a layer it verified: the verdict, and the compression it
    was inflated as (the diff_id holds only for that)."""

    verdict: LayerVerdict
    compression: str | None

    def vouches_for(
        self, descriptor: Descriptor, diff_id: Digest | None, stored: int | None
    ) -> bool:
        """True when this record covers ``descriptor`` with ``diff_id`` and the blob file
        (``stored`` bytes, None if absent) is still whole."""
        compression = mt.layer_compression(descriptor.media_type)
        return (
            diff_id is not None
            and self.verdict.diff_id == diff_id
            and compression is not None
            and self.compression == compression.value
            and self.verdict.compressed_size == descriptor.size
            and stored == descriptor.size
        )


def blob_path(root: Path, digest: Digest) -> Path:
    return root / "blobs" / digest.algorithm / digest.hex


def layer_record_path(root: Path, digest: Digest) -> Path:
    return root / SIDECAR / "layers" / digest.algorithm / f"{digest.hex}.json"


def read_layer_record(root: Path, digest: Digest) -> LayerRecord | None:
    """The stored record, or None when absent or unreadable (then the blob is fetched)."""
    try:
        doc = load_json_object(layer_record_path(root, digest).read_bytes(), "layer record")
        verdict = LayerVerdict(
            digest=parse_digest(str(doc["digest"])),
            diff_id=parse_digest(str(doc["diff_id"])),
            compressed_size=int(doc["size"]),
            uncompressed_size=int(doc["uncompressed_size"]),
        )
    except (OSError, KeyError, ValueError, TypeError, PullVerifyError):
        return None
    compression = doc.get("compression")
    return LayerRecord(verdict, compression if isinstance(compression, str) else None)


def stored_size(root: Path, digest: Digest) -> int | None:
    """The size of a stored blob's file, or None when there is none."""
    try:
        return blob_path(root, digest).stat().st_size
    except FileNotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class StoredImage:
    """One ``index.json`` entry as ``puller images`` and the docker-archive writer need it."""

    descriptor: Descriptor  # the OCI manifest index.json points at
    name: str | None  # the full reference (io.containerd.image.name)
    ref_name: str | None
    source_digest: Digest | None
    manifest_digest: Digest | None
    uncompressed_size: int | None

    @property
    def reference(self) -> Reference | None:
        if self.name is None:
            return None
        try:
            return parse_reference(self.name)
        except PullVerifyError:
            return None


@dataclass(slots=True)
class _Pending:
    """What this pull put in the layout, kept in memory until ``finish_image``."""

    manifests: dict[Digest, tuple[Descriptor, bytes]] = field(default_factory=dict)
    verdicts: dict[Digest, LayerVerdict] = field(default_factory=dict)


class LayoutStore:
    """An OCI image layout that receives verified blobs; a ``BlobSink``.

    ``ref_names="tag"`` (``--output DIR``): ``org.opencontainers.image.ref.name`` is the tag,
    as ``skopeo inspect oci:DIR:TAG`` expects. ``ref_names="reference"`` (the store, which
    holds many repositories): it is the full reference, so two ``latest`` never collide.
    """

    def __init__(
        self, root: Path, *, ref_names: RefNames = "reference", reverify: bool = False
    ) -> None:
        self.root = root
        self.ref_names: RefNames = ref_names
        self.reverify = reverify
        self.finished: list[StoredImage] = []
        self.repaired: list[str] = []  # stored blobs that failed --reverify and were fetched again
        self._pending = _Pending()

    # -- paths --------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return blob_path(self.root, digest)

    def _temp_path(self, final: Path) -> Path:
        # Same directory as the final name, so the rename is atomic; never a valid digest.
        return final.with_name(f".tmp-{final.name[:16]}-{secrets.token_hex(6)}")

    # -- opening ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the layout (or adopt an existing one); refuse a directory that is not one."""
        await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        root = self.root
        try:
            if root.exists() and not root.is_dir():
                raise UsageError(f"{root} exists and is not a directory")
            layout_file = root / "oci-layout"
            if root.is_dir() and any(root.iterdir()) and not layout_file.is_file():
                raise UsageError(f"{root} is not empty and is not an OCI image layout")
            (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            (root / SIDECAR).mkdir(exist_ok=True)
            if not layout_file.is_file():
                _write_atomic(layout_file, LAYOUT_VERSION)
        except OSError as exc:
            raise write_failure(root, exc) from exc

    # -- BlobSink -----------------------------------------------------------------------

    async def has_verified(
        self, descriptor: Descriptor, diff_id: Digest | None
    ) -> LayerVerdict | None:
        digest = descriptor.digest
        path = self.blob_path(digest)
        record = await anyio.to_thread.run_sync(self._stored_record, descriptor, diff_id)
        if record is None or diff_id is None:
            return None
        if self.reverify:
            verdict = await self._reverify(descriptor, diff_id, path)
            if verdict is None:
                return None
            record = verdict
        self._pending.verdicts[digest] = record
        return record

    async def _reverify(self, desc: Descriptor, diff_id: Digest, path: Path) -> LayerVerdict | None:
        """Hash the stored blob again: digest, size, inflate, diff_id. A stored blob that
        fails is removed (it is not what its name says) and fetched again."""
        compression = mt.layer_compression(desc.media_type)
        if compression is None:
            return None
        verifier = LayerVerifier(
            digest=desc.digest,
            size=desc.size,
            compression=compression,
            diff_id=diff_id,
            subject=f"stored layer {desc.digest}",
        )
        try:
            async with aiofiles.open(path, "rb") as f:
                while chunk := await f.read(READ_CHUNK):
                    await anyio.to_thread.run_sync(verifier.feed, chunk)
            return await anyio.to_thread.run_sync(verifier.finish)
        except (IntegrityError, OSError) as exc:
            self.repaired.append(f"{path}: {getattr(exc, 'message', exc)}")
            await anyio.to_thread.run_sync(self._forget, desc.digest)
            return None

    def _forget(self, digest: Digest) -> None:
        for path in (self.blob_path(digest), layer_record_path(self.root, digest)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _stored_record(self, desc: Descriptor, diff_id: Digest | None) -> LayerVerdict | None:
        """The layer's verdict if its blob is stored whole and was verified as this layer."""
        record = read_layer_record(self.root, desc.digest)
        if record is None or not record.vouches_for(
            desc, diff_id, stored_size(self.root, desc.digest)
        ):
            return None
        return record.verdict

    async def open_blob(self, descriptor: Descriptor) -> BlobWriter:
        final = self.blob_path(descriptor.digest)
        return _LayoutBlobWriter(self, descriptor, final, self._temp_path(final))

    async def put_verified(self, descriptor: Descriptor, data: bytes) -> None:
        if mt.manifest_kind(descriptor.media_type) != "unknown":
            self._pending.manifests[descriptor.digest] = (descriptor, data)
        await anyio.to_thread.run_sync(self._put_bytes, descriptor.digest, data)

    async def finish_image(self, reference: str, manifest: Descriptor) -> None:
        images = await anyio.to_thread.run_sync(self._finish_sync, reference, manifest)
        self.finished.extend(images)

    # -- writing ------------------------------------------------------------------------

    def _put_bytes(self, digest: Digest, data: bytes) -> None:
        path = self.blob_path(digest)
        try:
            # Rewrite a stored copy that differs: the bytes in hand are the verified ones.
            if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data, temp=self._temp_path(path))
        except OSError as exc:
            raise write_failure(path, exc) from exc

    def _record_layer(self, verdict: LayerVerdict, descriptor: Descriptor) -> None:
        path = layer_record_path(self.root, verdict.digest)
        compression = mt.layer_compression(descriptor.media_type)
        doc = {
            "digest": str(verdict.digest),
            "diff_id": str(verdict.diff_id),
            # The diff_id was computed by inflating as this compression: the same blob named
            # with another layer type by another manifest was never verified as that.
            "compression": compression.value if compression else None,
            "size": verdict.compressed_size,
            "uncompressed_size": verdict.uncompressed_size,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, _dump(doc), temp=self._temp_path(path))
        except OSError as exc:
            raise write_failure(path, exc) from exc
        self._pending.verdicts[verdict.digest] = verdict

    def _finish_sync(self, reference: str, top: Descriptor) -> list[StoredImage]:
        ref = parse_reference(reference)
        entry = self._pending.manifests.get(top.digest)
        if entry is None:
            raise UsageError(f"{reference}: finish_image before its manifest was stored")
        parsed = parse_manifest(entry[1], top.media_type)
        if isinstance(parsed, ImageManifest):
            chosen = [(top, parsed)]
        else:
            chosen = self._verified_children(parsed)
        tagged = _pick_tagged(chosen)
        images: list[StoredImage] = []
        for desc, manifest in chosen:
            images.append(self._store_manifest(ref, top, desc, manifest, tag_it=desc is tagged))
        try:
            self._update_index(images, ref)
        except OSError as exc:
            raise write_failure(self.root / "index.json", exc) from exc
        return images

    def _verified_children(self, index: ImageIndex) -> list[tuple[Descriptor, ImageManifest]]:
        found = []
        for desc in index.manifests:
            pending = self._pending.manifests.get(desc.digest)
            if pending is None:
                continue
            manifest = parse_manifest(pending[1], desc.media_type)
            if isinstance(manifest, ImageManifest):
                found.append((desc, manifest))
        return found

    def _store_manifest(
        self,
        ref: Reference,
        top: Descriptor,
        served: Descriptor,
        manifest: ImageManifest,
        *,
        tag_it: bool,
    ) -> StoredImage:
        """The index.json entry for one verified image manifest (converted to OCI if needed)."""
        if served.media_type == mt.OCI_MANIFEST:
            desc = Descriptor(mt.OCI_MANIFEST, served.digest, served.size, platform=served.platform)
        else:
            data = oci_manifest_for(manifest)
            digest = Digest.of(data)
            self._put_bytes(digest, data)
            desc = Descriptor(mt.OCI_MANIFEST, digest, len(data), platform=served.platform)
        sizes = [self._pending.verdicts.get(layer.digest) for layer in manifest.layers]
        uncompressed = sum(v.uncompressed_size for v in sizes if v) if all(sizes) else None
        ref_name = None
        if tag_it:
            ref_name = ref.tag if self.ref_names == "tag" else str(ref)
        return StoredImage(
            descriptor=desc,
            name=str(ref),
            ref_name=ref_name,
            source_digest=top.digest,
            manifest_digest=served.digest,
            uncompressed_size=uncompressed,
        )

    def _update_index(self, images: list[StoredImage], ref: Reference) -> None:
        """Read, replace this reference's entries, write back: under a lock, renamed in."""
        with _locked(self.root / SIDECAR / "lock"):
            entries = self._read_index_entries()
            names = {str(ref)}
            ref_names = {img.ref_name for img in images if img.ref_name}
            kept = [
                e
                for e in entries
                if e.get("annotations", {}).get(CONTAINERD_NAME) not in names
                and e.get("annotations", {}).get(REF_NAME) not in ref_names
            ]
            for img in images:
                annotations = {CONTAINERD_NAME: img.name or str(ref)}
                if img.ref_name:
                    annotations[REF_NAME] = img.ref_name
                if img.source_digest is not None:
                    annotations[SOURCE_DIGEST] = str(img.source_digest)
                if img.manifest_digest is not None:
                    annotations[MANIFEST_DIGEST] = str(img.manifest_digest)
                if img.uncompressed_size is not None:
                    annotations[UNCOMPRESSED_SIZE] = str(img.uncompressed_size)
                kept.append(descriptor_json(img.descriptor, annotations))
            doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": kept}
            _write_atomic(self.root / "index.json", json.dumps(doc, indent=2).encode() + b"\n")

    def _read_index_entries(self) -> list[dict[str, Any]]:
        path = self.root / "index.json"
        if not path.is_file():
            return []
        doc = load_json_object(_read_bounded(path), f"{path}")
        raw = doc.get("manifests", [])
        if not isinstance(raw, list):
            return []
        return [e for e in raw if isinstance(e, dict)]


class _LayoutBlobWriter:
    """One layer streaming to a temporary file; renamed under its digest on commit."""

    on_uncompressed: Consumer | None = None

    def __init__(self, store: LayoutStore, desc: Descriptor, final: Path, temp: Path) -> None:
        self.store = store
        self.desc = desc
        self.final = final
        self.temp = temp
        self._file: AsyncBufferedIOBase | None = None

    async def _opened(self) -> AsyncBufferedIOBase:
        if self._file is None:
            try:
                self.final.parent.mkdir(parents=True, exist_ok=True)
                self._file = await aiofiles.open(self.temp, "wb")
            except OSError as exc:
                raise write_failure(self.temp, exc) from exc
        return self._file

    async def write(self, chunk: bytes) -> None:
        f = await self._opened()
        try:
            await f.write(chunk)
        except OSError as exc:
            raise write_failure(self.temp, exc) from exc

    async def restart(self) -> None:
        f = await self._opened()
        try:
            await f.seek(0)
            await f.truncate()
        except OSError as exc:
            raise write_failure(self.temp, exc) from exc

    async def commit(self, verdict: LayerVerdict) -> None:
        if verdict.digest != self.desc.digest:
            raise UsageError(
                f"blob {self.desc.digest}: commit with the verdict of {verdict.digest}"
            )
        f = await self._opened()
        try:
            await f.flush()
            # Durable before it is visible: a crash must not leave a short file under a digest.
            await anyio.to_thread.run_sync(os.fsync, f.fileno())
            await f.close()
            self._file = None
            await anyio.to_thread.run_sync(os.replace, self.temp, self.final)
            await anyio.to_thread.run_sync(self.store._record_layer, verdict, self.desc)
        except OSError as exc:
            raise write_failure(self.final, exc) from exc

    async def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                await self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self.temp.unlink()


def _pick_tagged(chosen: list[tuple[Descriptor, ImageManifest]]) -> Descriptor | None:
    """The one manifest the tag names: this machine's platform if pulled, else the first."""
    if not chosen:
        return None
    here = host_platform()
    for desc, _ in chosen:
        p = desc.platform
        if p is not None and (p.os, p.architecture) == (here.os, here.architecture):
            return desc
    return chosen[0][0]


def _write_atomic(path: Path, data: bytes, *, temp: Path | None = None) -> None:
    tmp = temp or path.with_name(f".tmp-{path.name}-{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read_bounded(path: Path, limit: int = MAX_INDEX_BYTES) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{path} is over {limit} bytes")
    return data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- reading a store (puller images, docker-archive) -----------------------------------


def read_store(root: Path) -> list[StoredImage]:
    """Every named entry of a layout's ``index.json``; an absent store is an empty one."""
    path = root / "index.json"
    if not path.is_file():
        if root.exists() and not (root / "oci-layout").is_file():
            raise UsageError(f"{root} is not an OCI image layout")
        return []
    doc = load_json_object(_read_bounded(path), str(path))
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise UsageError(f"{path}: field 'manifests' is missing or not a list")
    images = []
    for i, obj in enumerate(raw):
        desc = parse_descriptor(obj, f"{path} entry {i}")
        ann = desc.annotations
        size = ann.get(UNCOMPRESSED_SIZE)
        images.append(
            StoredImage(
                descriptor=desc,
                name=ann.get(CONTAINERD_NAME),
                ref_name=ann.get(REF_NAME),
                source_digest=_digest_or_none(ann.get(SOURCE_DIGEST)),
                manifest_digest=_digest_or_none(ann.get(MANIFEST_DIGEST)),
                uncompressed_size=int(size) if size and size.isdigit() else None,
            )
        )
    return images


def _digest_or_none(text: str | None) -> Digest | None:
    if text is None:
        return None
    try:
        return parse_digest(text)
    except PullVerifyError:
        return None


def read_blob(root: Path, digest: Digest, limit: int) -> bytes:
    path = blob_path(root, digest)
    try:
        data = _read_bounded(path, limit)
    except FileNotFoundError:
        raise UsageError(f"{root}: blob {digest} is missing from the layout") from None
    actual = Digest.of(data, digest.algorithm)
    if actual != digest:
        from puller.errors import DigestMismatch

        raise DigestMismatch(
            f"stored blob {digest}: hashes to {actual}",
            subject=f"stored blob {digest}",
            expected=str(digest),
            actual=str(actual),
        )
    return data


# -- choosing what --output/--store/--format make ------------------------------------

Format = Literal["oci", "docker-archive"]


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """Where verified content goes; ``None`` everywhere means verify only, write nothing."""

    output: Path | None = None
    format: Format = "oci"
    store: Path | None = None
    reverify: bool = False

    @property
    def writes(self) -> bool:
        return self.output is not None or self.store is not None

    def check(self, *, all_platforms: bool) -> None:
        if self.format not in ("oci", "docker-archive"):
            raise UsageError(f"unknown --format {self.format!r}: expected oci or docker-archive")
        if self.format == "docker-archive":
            if self.output is None:
                raise UsageError("--format docker-archive needs --output FILE.tar")
            if all_platforms:
                raise UsageError("--format docker-archive holds one platform: drop --all-platforms")
        if self.format == "oci" and self.output is not None and self.store is not None:
            raise UsageError("--output DIR and --store DIR are two layouts: give one")
        if self.reverify and not self.writes:
            raise UsageError("--reverify needs a store to re-hash: add --store, --keep or --output")


@contextlib.asynccontextmanager
async def open_output(options: OutputOptions) -> AsyncIterator[BlobSink]:
    """The sink for ``options``: a layout, the store, or a docker-archive built from one."""
    if options.format == "docker-archive":
        from puller.archive import open_archive_sink

        assert options.output is not None
        async with open_archive_sink(
            options.output, store=options.store, reverify=options.reverify
        ) as sink:
            yield sink
        return
    if options.output is not None:
        layout = LayoutStore(options.output, ref_names="tag", reverify=options.reverify)
    else:
        assert options.store is not None
        layout = LayoutStore(options.store, ref_names="reference", reverify=options.reverify)
    await layout.open()
    yield layout


def describe_sink(sink: object, *, ok: bool) -> list[str]:
    """Lines for the user: where the verified image went, and blobs --reverify replaced."""
    from puller.archive import ArchiveSink

    layout = sink.layout if isinstance(sink, ArchiveSink) else sink
    if not isinstance(layout, LayoutStore):
        return []
    lines = [f"Re-verification failed, fetched again: {what}" for what in layout.repaired]
    if not ok:
        return lines
    if isinstance(sink, ArchiveSink):
        if sink.written is not None:
            lines.append(f"Saved: docker-archive:{sink.written}")
        return lines
    for image in layout.finished:
        if image.ref_name is not None:
            lines.append(f"Saved: oci:{layout.root}:{image.ref_name}")
        else:
            lines.append(f"Saved: {layout.root} ({image.descriptor.digest})")
    return lines
