"""Make synthetic container images and push them through a registry's upload API.

Layer: test kit. Building (``make_tar``, compression, ``build_image``, ``build_index``) is
pure and deterministic for a given seed; pushing (``push_*``) does network I/O to loopback
registries through ``tests.kit.client``.

The values here are the ground truth the tests compare against: ``BuiltImage.manifest`` is
the exact byte string pushed, ``Blob.digest`` the sha256 of the exact bytes stored, and
``BuiltLayer.diff_id`` the sha256 of the uncompressed tar. Nothing here uses ``puller``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin

import zstandard

from tests.kit.client import (
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    KitHTTPError,
    request,
)

Format = Literal["docker", "oci"]
Compression = Literal["gzip", "gzip-multi", "zstd", "none"]

MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_IN_TOTO = "application/vnd.in-toto+json"

# A fixed timestamp keeps configs (and so image ids) reproducible.
CREATED = "2024-01-01T00:00:00Z"
_TAR_MTIME = 1704067200  # CREATED as a Unix time


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------
# Layer content


def make_tar(
    files: Mapping[str, bytes],
    *,
    mtime: int = _TAR_MTIME,
    mode: int = 0o644,
    directories: bool = True,
) -> bytes:
    """A deterministic tar: sorted names, fixed mtime, uid/gid 0, no user names.

    With ``directories`` each file's parent directories get their own entries first, as
    real layers have. Names are relative (``etc/hosts``); a leading ``/`` is dropped.
    """
    buf = io.BytesIO()
    seen_dirs: set[str] = set()

    def info(name: str, kind: bytes, size: int, perm: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.size = size
        ti.mode = perm
        ti.mtime = mtime
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for raw_name in sorted(files):
            name = raw_name.lstrip("/")
            if not name:
                raise ValueError(f"empty file name in make_tar: {raw_name!r}")
            if directories:
                parts = name.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    dirname = "/".join(parts[:depth])
                    if dirname not in seen_dirs:
                        seen_dirs.add(dirname)
                        tar.addfile(info(dirname, tarfile.DIRTYPE, 0, 0o755))
            data = files[raw_name]
            tar.addfile(info(name, tarfile.REGTYPE, len(data), mode), io.BytesIO(data))
    return buf.getvalue()


def random_bytes(n: int, seed: int) -> bytes:
    """``n`` incompressible bytes, the same for the same seed."""
    return random.Random(seed).randbytes(n)


_WORDS = (
    "layer",
    "blob",
    "digest",
    "manifest",
    "index",
    "registry",
    "config",
    "tar",
    "gzip",
    "zstd",
    "verify",
    "stream",
    "chunk",
    "descriptor",
    "platform",
    "amd64",
    "arm64",
    "linux",
    "usr",
    "bin",
    "lib",
    "etc",
    "share",
    "docs",
    "python",
    "package",
    "install",
    "build",
    "cache",
    "error",
    "warning",
    "info",
    "debug",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "with",
    "on",
)


def text_like_bytes(n: int, seed: int) -> bytes:
    """``n`` bytes of compressible, log-like text (gzip shrinks it about 4x, zstd about 15x)."""
    rng = random.Random(seed)
    lines = [
        (
            f"{rng.randrange(10**6):06d} "
            + " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(4, 14)))
            + "\n"
        ).encode()
        for _ in range(4096)
    ]
    out = bytearray()
    while len(out) < n:
        out += b"".join(rng.choices(lines, k=4096))
    return bytes(out[:n])


# ---------------------------------------------------------------------------------------
# Compression


def _split(data: bytes, parts: int) -> list[bytes]:
    """Cut ``data`` into ``parts`` pieces at arbitrary (not record-aligned) offsets."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    step = max(1, -(-len(data) // parts))
    pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    return pieces


def gzip_compress(data: bytes, *, level: int = 6) -> bytes:
    """One gzip member, mtime 0 (reproducible)."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def gzip_multi_member(data: bytes, *, members: int = 3, level: int = 6) -> bytes:
    """Several gzip members back to back (as pigz/parallel producers write)."""
    return b"".join(gzip_compress(piece, level=level) for piece in _split(data, members))


def zstd_compress(data: bytes, *, frames: int = 1, level: int = 3) -> bytes:
    """One or more zstd frames back to back, each with its content size."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
    return b"".join(cctx.compress(piece) for piece in _split(data, frames))


def compress(data: bytes, compression: Compression, *, parts: int = 1) -> bytes:
    """Compress with one of the kit's methods; ``parts`` is members/frames (ignored for none)."""
    if compression == "gzip":
        return gzip_compress(data) if parts == 1 else gzip_multi_member(data, members=parts)
    if compression == "gzip-multi":
        return gzip_multi_member(data, members=max(parts, 2))
    if compression == "zstd":
        return zstd_compress(data, frames=parts)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


# ---------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes as stored in a registry, with their media type; digest and size are derived."""

    media_type: str
    data: bytes = field(repr=False)
    digest: str = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", sha256_digest(self.data))
        object.__setattr__(self, "size", len(self.data))

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer to build: its uncompressed tar and how to compress it.

    ``parts`` is the number of gzip members or zstd frames. ``media_type`` overrides the
    type the format would pick (to label a layer wrongly on purpose).
    """

    tar: bytes = field(repr=False)
    compression: Compression = "gzip"
    parts: int = 1
    media_type: str | None = None


@dataclass(frozen=True, slots=True)
class BuiltLayer:
    blob: Blob
    diff_id: str  # sha256 of the uncompressed tar
    uncompressed_size: int
    compression: Compression

    @property
    def digest(self) -> str:
        return self.blob.digest


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """One image manifest and everything it references, as exact bytes."""

    config: Blob
    layers: tuple[BuiltLayer, ...]
    manifest: bytes = field(repr=False)
    manifest_media_type: str
    manifest_digest: str = field(init=False)
    platform: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifest_digest", sha256_digest(self.manifest))

    @property
    def image_id(self) -> str:
        """The config digest, as docker names an image."""
        return self.config.digest

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *(layer.blob for layer in self.layers)]

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.manifest_media_type,
            "digest": self.manifest_digest,
            "size": len(self.manifest),
            **extra,
        }


@dataclass(frozen=True, slots=True)
class BuiltIndex:
    """An OCI image index or Docker manifest list and the manifests it names."""

    manifest: bytes = field(repr=False)
    media_type: str
    images: tuple[BuiltImage, ...]
    attestations: tuple[BuiltImage, ...] = ()
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", sha256_digest(self.manifest))

    @property
    def children(self) -> tuple[BuiltImage, ...]:
        return (*self.images, *self.attestations)


# ---------------------------------------------------------------------------------------
# Building


def _layer_media_type(fmt: Format, compression: Compression) -> str:
    if fmt == "docker":
        if compression == "zstd":
            raise ValueError(
                "Docker schema2 has no zstd layer type: use fmt='oci' "
                "(or LayerSpec.media_type to mislabel on purpose)"
            )
        return MEDIA_DOCKER_LAYER_TAR if compression == "none" else MEDIA_DOCKER_LAYER_GZIP
    return {
        "gzip": MEDIA_OCI_LAYER_GZIP,
        "gzip-multi": MEDIA_OCI_LAYER_GZIP,
        "zstd": MEDIA_OCI_LAYER_ZSTD,
        "none": MEDIA_OCI_LAYER_TAR,
    }[compression]


def _dump_manifest(doc: Mapping[str, Any], fmt: Format, trailing_newline: bool) -> bytes:
    # Docker's tools indent schema2 manifests by three spaces; OCI producers mostly write
    # compact JSON. Either way the pushed bytes are what a digest is computed over.
    indent, separators = (3, None) if fmt == "docker" else (None, (",", ":"))
    text = json.dumps(doc, indent=indent, separators=separators)
    return (text + ("\n" if trailing_newline else "")).encode()


def build_layer(spec: LayerSpec, fmt: Format) -> BuiltLayer:
    data = compress(spec.tar, spec.compression, parts=spec.parts)
    media_type = spec.media_type or _layer_media_type(fmt, spec.compression)
    return BuiltLayer(
        blob=Blob(media_type, data),
        diff_id=sha256_digest(spec.tar),
        uncompressed_size=len(spec.tar),
        compression=spec.compression,
    )


def build_image(
    layers: Sequence[LayerSpec],
    *,
    fmt: Format,
    os: str = "linux",
    arch: str = "amd64",
    variant: str | None = None,
    diff_ids_override: Sequence[str] | None = None,
    manifest_trailing_newline: bool = False,
    config_extra: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> BuiltImage:
    """Build a complete image: compressed layers, config, and the manifest bytes to push.

    ``diff_ids_override`` puts other diff_ids in the config (to test diff_id checks);
    ``config_extra`` is merged into the config's top level.
    """
    built = tuple(build_layer(spec, fmt) for spec in layers)
    diff_ids = (
        list(diff_ids_override)
        if diff_ids_override is not None
        else [layer.diff_id for layer in built]
    )
    platform = {"architecture": arch, "os": os}
    if variant is not None:
        platform["variant"] = variant
    config_doc: dict[str, Any] = {
        **platform,
        "created": CREATED,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": CREATED, "created_by": f"pull-verify test kit: layer {i}"}
            for i in range(len(built))
        ],
    }
    if config_extra:
        config_doc.update(config_extra)
    config_type = MEDIA_DOCKER_CONFIG if fmt == "docker" else MEDIA_OCI_CONFIG
    config = Blob(config_type, json.dumps(config_doc, sort_keys=True).encode())
    manifest_type = MEDIA_DOCKER_MANIFEST if fmt == "docker" else MEDIA_OCI_MANIFEST
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [layer.blob.descriptor() for layer in built],
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    return BuiltImage(
        config=config,
        layers=built,
        manifest=_dump_manifest(doc, fmt, manifest_trailing_newline),
        manifest_media_type=manifest_type,
        platform=platform,
    )


def _attestation_for(image: BuiltImage) -> BuiltImage:
    """A buildx-style attestation manifest (an in-toto statement) for ``image``."""
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{"name": "pull-verify-test", "digest": {"sha256": image.image_id[7:]}}],
            "predicate": {"spdxVersion": "SPDX-2.3", "name": "pull-verify-test"},
        },
        sort_keys=True,
    ).encode()
    layer = BuiltLayer(
        blob=Blob(MEDIA_IN_TOTO, statement),
        diff_id=sha256_digest(statement),
        uncompressed_size=len(statement),
        compression="none",
    )
    platform = {"architecture": "unknown", "os": "unknown"}
    config_doc = {
        **platform,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }
    config = Blob(MEDIA_OCI_CONFIG, json.dumps(config_doc, sort_keys=True).encode())
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [
            layer.blob.descriptor(
                annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"}
            )
        ],
    }
    return BuiltImage(
        config=config,
        layers=(layer,),
        manifest=_dump_manifest(doc, "oci", False),
        manifest_media_type=MEDIA_OCI_MANIFEST,
        platform=platform,
    )


def build_index(
    images: Sequence[BuiltImage],
    fmt: Format,
    *,
    extra_attestation: bool = False,
    trailing_newline: bool = False,
) -> BuiltIndex:
    """An OCI index or Docker manifest list naming ``images`` with their platforms.

    With ``extra_attestation`` each image gets a buildx-style attestation manifest entry
    (platform unknown/unknown, annotated with the image it describes).
    """
    entries = [image.descriptor(platform=dict(image.platform)) for image in images]
    attestations: list[BuiltImage] = []
    if extra_attestation:
        for image in images:
            att = _attestation_for(image)
            attestations.append(att)
            entries.append(
                att.descriptor(
                    platform=dict(att.platform),
                    annotations={
                        "vnd.docker.reference.digest": image.manifest_digest,
                        "vnd.docker.reference.type": "attestation-manifest",
                    },
                )
            )
    media_type = MEDIA_DOCKER_LIST if fmt == "docker" else MEDIA_OCI_INDEX
    doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return BuiltIndex(
        manifest=_dump_manifest(doc, fmt, trailing_newline),
        media_type=media_type,
        images=tuple(images),
        attestations=tuple(attestations),
    )


# ---------------------------------------------------------------------------------------
# Ready-made images


def standard_image(seed: int = 0, *, fmt: Format = "docker") -> BuiltImage:
    """A small three-layer image: random (gzip), text-like (gzip), mixed (3 gzip members)."""
    return build_image(
        [
            LayerSpec(make_tar({"bin/random.bin": random_bytes(48 * 1024, seed)})),
            LayerSpec(make_tar({"usr/share/doc/log.txt": text_like_bytes(128 * 1024, seed + 1)})),
            LayerSpec(
                make_tar(
                    {
                        "etc/app/conf.txt": text_like_bytes(40 * 1024, seed + 2),
                        "opt/app/data.bin": random_bytes(24 * 1024, seed + 3),
                    }
                ),
                compression="gzip-multi",
                parts=3,
            ),
        ],
        fmt=fmt,
    )


def demo_image(seed: int = 2024) -> BuiltImage:
    """A sizeable OCI image for ``make demo``: 4 layers, about 20 MiB uncompressed.

    Mixed compressibility and compression: random data (gzip), text (gzip), text (zstd, two
    frames), and a mixed layer written as four gzip members.
    """
    mib = 1024 * 1024
    return build_image(
        [
            LayerSpec(make_tar({"opt/demo/blob.bin": random_bytes(6 * mib, seed)})),
            LayerSpec(make_tar({"var/log/demo.log": text_like_bytes(8 * mib, seed + 1)})),
            LayerSpec(
                make_tar({"usr/share/demo/words.txt": text_like_bytes(4 * mib, seed + 2)}),
                compression="zstd",
                parts=2,
            ),
            LayerSpec(
                make_tar(
                    {
                        "srv/demo/a.bin": random_bytes(mib, seed + 3),
                        "srv/demo/b.txt": text_like_bytes(mib, seed + 4),
                    }
                ),
                compression="gzip-multi",
                parts=4,
            ),
        ],
        fmt="oci",
    )


# ---------------------------------------------------------------------------------------
# Pushing (network I/O, loopback only)


def _headers(auth_header: str | None, **more: str) -> dict[str, str]:
    headers = {key.replace("_", "-"): value for key, value in more.items()}
    if auth_header:
        headers["Authorization"] = auth_header
    return headers


def blob_exists(
    registry_url: str, repo: str, digest: str, *, auth_header: str | None = None
) -> bool:
    resp = request(
        "HEAD", f"{registry_url}/v2/{repo}/blobs/{digest}", headers=_headers(auth_header)
    )
    if resp.status == 200:
        return True
    if resp.status == 404:
        return False
    raise KitHTTPError(f"HEAD blob {repo}@{digest}", resp.status, resp.body)


def push_blob(registry_url: str, repo: str, blob: Blob, *, auth_header: str | None = None) -> bool:
    """Upload ``blob`` monolithically (POST, then PUT ?digest=); False if it was there."""
    if blob_exists(registry_url, repo, blob.digest, auth_header=auth_header):
        return False
    start = request(
        "POST",
        f"{registry_url}/v2/{repo}/blobs/uploads/",
        body=b"",
        headers=_headers(auth_header),
    )
    if start.status != 202:
        raise KitHTTPError(f"POST upload {repo}", start.status, start.body)
    location = start.header("Location")
    if not location:
        raise KitHTTPError(f"POST upload {repo}: no Location", start.status, start.body)
    # Location may be relative (http.relativeurls) or absolute.
    upload_url = urljoin(registry_url + "/", location)
    upload_url += ("&" if "?" in upload_url else "?") + f"digest={blob.digest}"
    done = request(
        "PUT",
        upload_url,
        body=blob.data,
        headers=_headers(auth_header, Content_Type="application/octet-stream"),
    )
    if done.status != 201:
        raise KitHTTPError(f"PUT blob {repo}@{blob.digest}", done.status, done.body)
    return True


def push_manifest_bytes(
    registry_url: str,
    repo: str,
    reference: str,
    data: bytes,
    media_type: str,
    *,
    auth_header: str | None = None,
) -> str:
    """PUT exact manifest bytes under a tag or digest; return the registry's digest."""
    resp = request(
        "PUT",
        f"{registry_url}/v2/{repo}/manifests/{reference}",
        body=data,
        headers=_headers(auth_header, Content_Type=media_type),
    )
    if resp.status != 201:
        raise KitHTTPError(f"PUT manifest {repo}:{reference}", resp.status, resp.body)
    digest = resp.header("Docker-Content-Digest") or sha256_digest(data)
    if digest != sha256_digest(data):
        raise RuntimeError(
            f"registry stored manifest {repo}:{reference} as {digest}, "
            f"but the bytes pushed hash to {sha256_digest(data)}"
        )
    return digest


def push_image(
    registry_url: str,
    repo: str,
    tag: str | None,
    image: BuiltImage,
    *,
    auth_header: str | None = None,
) -> str:
    """Push blobs then the manifest (by ``tag``, or by digest if None); return its digest."""
    for blob in image.blobs:
        push_blob(registry_url, repo, blob, auth_header=auth_header)
    return push_manifest_bytes(
        registry_url,
        repo,
        tag or image.manifest_digest,
        image.manifest,
        image.manifest_media_type,
        auth_header=auth_header,
    )


def push_index(
    registry_url: str,
    repo: str,
    tag: str | None,
    index: BuiltIndex,
    *,
    auth_header: str | None = None,
) -> str:
    """Push every child by digest, then the index (by ``tag`` or digest); return its digest."""
    for child in index.children:
        push_image(registry_url, repo, None, child, auth_header=auth_header)
    return push_manifest_bytes(
        registry_url,
        repo,
        tag or index.digest,
        index.manifest,
        index.media_type,
        auth_header=auth_header,
    )


# ---------------------------------------------------------------------------------------
# Layers with whiteouts, links and hostile names (for `puller cp`)


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One tar member written exactly as named: no normalisation, so hostile names survive."""

    name: str
    kind: Literal["file", "dir", "symlink", "hardlink"] = "file"
    data: bytes = b""
    target: str = ""  # link target for symlink / hardlink
    mode: int = 0o644


def make_raw_tar(entries: Sequence[TarEntry], *, mtime: int = _TAR_MTIME) -> bytes:
    """A tar of ``entries`` in the given order, names and link targets verbatim."""
    kinds = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            ti = tarfile.TarInfo(entry.name)
            ti.type = kinds[entry.kind]
            ti.size = len(entry.data) if entry.kind == "file" else 0
            ti.mode = 0o755 if entry.kind == "dir" and entry.mode == 0o644 else entry.mode
            ti.mtime = mtime
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.linkname = entry.target
            tar.addfile(ti, io.BytesIO(entry.data) if entry.kind == "file" else None)
    return buf.getvalue()


def whiteout(path: str) -> TarEntry:
    """The OCI whiteout that deletes ``path`` from lower layers (``dir/.wh.name``)."""
    parent, _, base = path.rpartition("/")
    return TarEntry(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opaque(directory: str) -> TarEntry:
    """The OCI marker that hides everything lower layers put in ``directory``."""
    return TarEntry(f"{directory.rstrip('/')}/.wh..wh..opq")
