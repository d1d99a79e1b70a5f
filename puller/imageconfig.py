"""Image config blob -> diff_ids, platform, creation time.

Layer: pure (no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from puller.digest import Digest, parse_digest
from puller.errors import InvalidContent
from puller.manifest import Platform, load_json_object

MAX_CONFIG_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageConfig:
    diff_ids: tuple[Digest, ...]
    platform: Platform
    created: str | None
    raw: dict[str, Any]


def parse_config(data: bytes) -> ImageConfig:
    doc = load_json_object(data, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise InvalidContent("image config: field 'rootfs' is missing or not an object")
    if rootfs.get("type") != "layers":
        raise InvalidContent(f"image config: rootfs type {rootfs.get('type')!r} is not 'layers'")
    raw_ids = rootfs.get("diff_ids")
    if not isinstance(raw_ids, list) or not all(isinstance(d, str) for d in raw_ids):
        raise InvalidContent("image config: rootfs.diff_ids is not a list of strings")
    diff_ids = tuple(parse_digest(d, what=f"diff_id {i}") for i, d in enumerate(raw_ids))
    os_name = doc.get("os")
    arch = doc.get("architecture")
    variant = doc.get("variant")
    created = doc.get("created")
    return ImageConfig(
        diff_ids=diff_ids,
        platform=Platform(
            os=os_name if isinstance(os_name, str) else "unknown",
            architecture=arch if isinstance(arch, str) else "unknown",
            variant=variant if isinstance(variant, str) else None,
        ),
        created=created if isinstance(created, str) else None,
        raw=doc,
    )
