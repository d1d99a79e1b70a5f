"""Docker schema2 and OCI media types, and what each says about a layer's compression.

Layer: pure (no I/O).
"""

from __future__ import annotations

import enum

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

IMAGE_MANIFESTS = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEXES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
CONFIGS = frozenset({DOCKER_CONFIG, OCI_CONFIG})

# Sent on every manifest request: without it distribution answers 404 for OCI manifests
# and rewrites schema2 into a signed schema1 document with another digest.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_COMPRESSION = {
    DOCKER_LAYER_GZIP: Compression.GZIP,
    DOCKER_FOREIGN_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    OCI_LAYER_NONDIST: Compression.NONE,
    OCI_LAYER_NONDIST_GZIP: Compression.GZIP,
    OCI_LAYER_NONDIST_ZSTD: Compression.ZSTD,
}

FOREIGN_LAYERS = frozenset(
    {DOCKER_FOREIGN_LAYER_GZIP, OCI_LAYER_NONDIST, OCI_LAYER_NONDIST_GZIP, OCI_LAYER_NONDIST_ZSTD}
)


def layer_compression(media_type: str) -> Compression | None:
    """The compression a layer media type implies, or None for a type that is not a layer."""
    return _LAYER_COMPRESSION.get(media_type)


def manifest_kind(media_type: str) -> str:
    """'image', 'index' or 'unknown': how to read a manifest of this media type."""
    if media_type in IMAGE_MANIFESTS:
        return "image"
    if media_type in INDEXES:
        return "index"
    return "unknown"
