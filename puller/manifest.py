"""Manifest bytes -> ImageManifest | ImageIndex: descriptors, platforms, platform choice.

Layer: pure (no I/O). Everything here reads untrusted bytes: each malformed field becomes
an ``InvalidContent`` naming the field, never a KeyError or TypeError.
"""

from __future__ import annotations

import json
import platform as _platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from puller import mediatypes as mt
from puller.digest import Digest, parse_digest
from puller.errors import InvalidContent, UnsupportedContent

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# No real blob is a petabyte; a larger size is hostile and would only confuse arithmetic.
MAX_DESCRIPTOR_SIZE = 1 << 50


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    @property
    def is_unknown(self) -> bool:
        return self.os == "unknown" or self.architecture == "unknown"


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` as given to ``--platform``."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        from puller.errors import UsageError

        raise UsageError(f"invalid platform {text!r}: expected os/arch[/variant]")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def host_platform() -> Platform:
    """This machine's platform, in Go's GOARCH spelling as registries use it."""
    machine = _platform.machine().lower()
    arch = {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "i386": "386",
        "i686": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine)
    if arch is None and machine.startswith("armv"):
        return Platform("linux", "arm", f"v{machine[4]}")
    return Platform("linux", arch or machine)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str | None = None

    @property
    def is_attestation(self) -> bool:
        reference_type = self.annotations.get("vnd.docker.reference.type")
        return reference_type == "attestation-manifest" or (
            self.platform is not None and self.platform.is_unknown
        )


@dataclass(frozen=True, slots=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def images(self) -> tuple[Descriptor, ...]:
        """Entries that are images for a real platform (attestations left out)."""
        return tuple(
            d
            for d in self.manifests
            if not d.is_attestation and mt.manifest_kind(d.media_type) in ("image", "index")
        )


def _field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name)
    # bool is an int in Python; a size of `true` is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidContent(f"{where}: field {name!r} is missing or not a {kind.__name__}")
    return value


def _optional_str(obj: Mapping[str, Any], name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidContent(f"{where}: field {name!r} is not a string")
    return value


def _annotations(obj: Mapping[str, Any], where: str) -> dict[str, str]:
    raw = obj.get("annotations")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise InvalidContent(f"{where}: annotations must map strings to strings")
    return dict(raw)


def _platform_of(obj: Mapping[str, Any], where: str) -> Platform | None:
    raw = obj.get("platform")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidContent(f"{where}: platform is not an object")
    return Platform(
        os=_field(raw, "os", str, f"{where} platform"),
        architecture=_field(raw, "architecture", str, f"{where} platform"),
        variant=_optional_str(raw, "variant", f"{where} platform"),
        os_version=_optional_str(raw, "os.version", f"{where} platform"),
    )


def parse_descriptor(obj: object, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise InvalidContent(f"{where}: descriptor is not an object")
    size = _field(obj, "size", int, where)
    if not 0 <= size <= MAX_DESCRIPTOR_SIZE:
        raise InvalidContent(f"{where}: size {size} is out of range")
    urls = obj.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidContent(f"{where}: urls must be a list of strings")
    return Descriptor(
        media_type=_field(obj, "mediaType", str, where),
        digest=parse_digest(_field(obj, "digest", str, where), what=f"{where} digest"),
        size=size,
        urls=tuple(urls),
        annotations=_annotations(obj, where),
        platform=_platform_of(obj, where),
        artifact_type=_optional_str(obj, "artifactType", where),
    )


def load_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Decode untrusted JSON that must be an object."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidContent(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidContent(f"{what} is not a JSON object")
    return value


def parse_manifest(data: bytes, content_type: str | None = None) -> ImageManifest | ImageIndex:
    """Read a manifest or index from the exact bytes served.

    The media type comes from the document's ``mediaType`` field, else the Content-Type
    header, else its shape (OCI allows leaving the field out).
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidContent(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    doc = load_json_object(data, "manifest")
    if doc.get("schemaVersion") == 1:
        raise UnsupportedContent("Docker schema1 manifests are deprecated and cannot be verified")
    if doc.get("schemaVersion") != 2:
        raise InvalidContent("manifest: schemaVersion is not 2")
    media_type = _optional_str(doc, "mediaType", "manifest")
    if media_type is None:
        header = (content_type or "").split(";")[0].strip()
        if mt.manifest_kind(header) != "unknown":
            media_type = header
        elif "manifests" in doc:
            media_type = mt.OCI_INDEX
        else:
            media_type = mt.OCI_MANIFEST
    kind = mt.manifest_kind(media_type)
    annotations = _annotations(doc, "manifest")
    if kind == "image":
        config = parse_descriptor(doc.get("config"), "manifest config")
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list):
            raise InvalidContent("manifest: field 'layers' is missing or not a list")
        layers = tuple(
            parse_descriptor(layer, f"manifest layer {i}") for i, layer in enumerate(raw_layers)
        )
        return ImageManifest(media_type, config, layers, annotations)
    if kind == "index":
        raw = doc.get("manifests")
        if not isinstance(raw, list):
            raise InvalidContent("index: field 'manifests' is missing or not a list")
        entries = tuple(parse_descriptor(m, f"index entry {i}") for i, m in enumerate(raw))
        return ImageIndex(media_type, entries, annotations)
    raise UnsupportedContent(f"unsupported manifest media type {media_type!r}")


def _variant_rank(candidate: Platform, wanted: Platform) -> int:
    """Lower is better: exact variant, then the architecture's default, then any."""
    if wanted.variant is not None:
        return 0 if candidate.variant == wanted.variant else 99
    defaults = {"arm64": "v8", "arm": "v7"}
    if candidate.variant in (None, defaults.get(candidate.architecture)):
        return 0
    return 1


def choose_platform(index: ImageIndex, wanted: Platform) -> Descriptor:
    """The index entry for ``wanted``; attestations never match."""
    best: tuple[int, Descriptor] | None = None
    for entry in index.images():
        p = entry.platform
        if p is None or p.os != wanted.os or p.architecture != wanted.architecture:
            continue
        rank = _variant_rank(p, wanted)
        if rank < 99 and (best is None or rank < best[0]):
            best = (rank, entry)
    if best is None:
        offered = ", ".join(str(d.platform) for d in index.images() if d.platform) or "none"
        raise UnsupportedContent(f"no image for platform {wanted} in the index (offers: {offered})")
    return best[1]
