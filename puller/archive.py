"""``--format docker-archive -o FILE.tar``: a tarball ``docker load`` and skopeo read.

Layer: I/O (files). Layers stream into an OCI layout first (the store given with
``--store``, else a temporary one next to FILE), through ``LayoutStore``, so every byte is
verified before it is used. Only when the whole image verified is the tarball written,
under a temporary name beside FILE, and renamed to FILE once complete: a FILE that exists
is always a whole, verified image.

The tarball holds ``manifest.json`` (``Config``, ``RepoTags``, ``Layers``), the config and
the layer blobs exactly as the registry served them (compressed), under
``blobs/<alg>/<hex>``. ``docker load`` and containers/image inflate compressed layers and
check them against the config's diff_ids.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import anyio

from puller.digest import Digest
from puller.errors import DigestMismatch, UsageError, write_failure
from puller.imageconfig import MAX_CONFIG_BYTES
from puller.manifest import MAX_MANIFEST_BYTES, Descriptor, ImageManifest, parse_manifest
from puller.sink import BlobSink, BlobWriter
from puller.store import LayoutStore, StoredImage, read_blob
from puller.verify import LayerVerdict


class ArchiveSink:
    """A ``BlobSink`` that fills a layout, then writes one docker-archive from it."""

    def __init__(self, layout: LayoutStore, target: Path) -> None:
        self.layout = layout
        self.target = target
        self.written: Path | None = None

    async def has_verified(
        self, descriptor: Descriptor, diff_id: Digest | None
    ) -> LayerVerdict | None:
        return await self.layout.has_verified(descriptor, diff_id)

    async def open_blob(self, descriptor: Descriptor) -> BlobWriter:
        return await self.layout.open_blob(descriptor)

    async def put_verified(self, descriptor: Descriptor, data: bytes) -> None:
        await self.layout.put_verified(descriptor, data)

    async def finish_image(self, reference: str, manifest: Descriptor) -> None:
        before = len(self.layout.finished)
        await self.layout.finish_image(reference, manifest)
        images = [img for img in self.layout.finished[before:] if img.ref_name is not None]
        if len(images) != 1:
            raise UsageError(f"{reference}: a docker-archive holds one image, got {len(images)}")
        await anyio.to_thread.run_sync(
            write_docker_archive, self.layout.root, images[0], self.target
        )
        self.written = self.target


def repo_tags(image: StoredImage) -> list[str]:
    """``RepoTags`` as docker save writes them: the familiar name with its tag."""
    ref = image.reference
    if ref is None or ref.tag is None:
        return []
    familiar = ref.familiar
    return [familiar.split("@", 1)[0]]


def write_docker_archive(root: Path, image: StoredImage, target: Path) -> None:
    """Write FILE from the layout at ``root``: temporary name first, renamed when whole."""
    manifest = parse_manifest(read_blob(root, image.descriptor.digest, MAX_MANIFEST_BYTES))
    if not isinstance(manifest, ImageManifest):
        raise UsageError(f"{image.name}: index.json entry is not an image manifest")
    config = read_blob(root, manifest.config.digest, MAX_CONFIG_BYTES)

    def member(digest: Digest) -> str:
        return f"blobs/{digest.algorithm}/{digest.hex}"

    doc = [
        {
            "Config": member(manifest.config.digest),
            "RepoTags": repo_tags(image),
            "Layers": [member(layer.digest) for layer in manifest.layers],
        }
    ]
    temp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(6)}")
    try:
        with (
            open(temp, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_bytes(tar, member(manifest.config.digest), config)
            seen: set[Digest] = set()
            for layer in manifest.layers:
                if layer.digest in seen:
                    continue  # one image may list the same layer twice; store it once
                seen.add(layer.digest)
                path = root / member(layer.digest)
                if path.stat().st_size != layer.size:
                    raise UsageError(
                        f"{root}: stored layer {layer.digest} is not {layer.size} bytes"
                    )
                info = tarfile.TarInfo(member(layer.digest))
                info.size = layer.size
                info.mode = 0o644
                with open(path, "rb") as blob:
                    hashing = _HashingReader(blob, layer.digest)
                    tar.addfile(info, hashing)
                # A stored blob may have rotted since it was verified: the archive only
                # ever holds bytes hashed on their way into it.
                hashing.check(f"{root}: stored layer")
            _add_bytes(tar, "manifest.json", json.dumps(doc).encode())
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise write_failure(target, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _check_target(target: Path) -> None:
    if target.is_dir():
        raise UsageError(f"{target} is a directory: --format docker-archive writes a file")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent} does not exist")


@contextlib.asynccontextmanager
async def open_archive_sink(
    target: Path, *, store: Path | None, reverify: bool
) -> AsyncIterator[BlobSink]:
    """The sink for ``-o FILE.tar``; its scratch layout (when not the store) is removed after."""
    await anyio.to_thread.run_sync(_check_target, target)
    scratch: Path | None = None
    if store is not None:
        layout = LayoutStore(store, ref_names="reference", reverify=reverify)
    else:
        scratch = target.with_name(f".{target.name}.layers-{secrets.token_hex(6)}")
        layout = LayoutStore(scratch, ref_names="tag")
    try:
        await layout.open()
        yield ArchiveSink(layout, target)
    finally:
        if scratch is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))


class _HashingReader:
    """A file's bytes as tarfile reads them, hashed on the way."""

    def __init__(self, raw: BinaryIO, digest: Digest) -> None:
        self._raw = raw
        self._digest = digest
        self._hash = digest.hasher()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        return data

    def check(self, what: str) -> None:
        actual = Digest(self._digest.algorithm, self._hash.hexdigest())
        if actual != self._digest:
            raise DigestMismatch(
                f"{what} {self._digest} hashes to {actual}: not written to the archive",
                subject=str(self._digest),
                expected=str(self._digest),
                actual=str(actual),
            )
