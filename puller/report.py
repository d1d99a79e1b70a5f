"""Result values of a pull, and how they are told: docker-pull-like text and JSON.

Layer: pure (no I/O): renderers return strings and dicts; the CLI prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from puller.digest import Digest
from puller.errors import EXIT_OK, IntegrityError, PullVerifyError, most_severe
from puller.manifest import Descriptor, Platform
from puller.verify import LayerVerdict


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison made during verification, kept whether it passed or not."""

    name: str  # e.g. "manifest-digest", "config-digest", "layer-digest", "diff-id"
    subject: str
    expected: str
    actual: str
    ok: bool


@dataclass(slots=True)
class LayerResult:
    index: int
    descriptor: Descriptor
    expected_diff_id: Digest | None
    verdict: LayerVerdict | None = None
    error: PullVerifyError | None = None
    attempts: int = 1
    resumed_at: list[int] = field(default_factory=list)
    skipped: str | None = None  # why the layer was not fetched (already verified in a store)

    @property
    def ok(self) -> bool:
        return self.error is None and (self.verdict is not None or self.skipped is not None)


@dataclass(slots=True)
class ImageResult:
    reference: str
    manifest_digest: Digest | None = None
    media_type: str | None = None
    platform: Platform | None = None
    image_id: Digest | None = None
    created: str | None = None
    layers: list[LayerResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    error: PullVerifyError | None = None

    def errors(self) -> list[PullVerifyError]:
        found = [layer.error for layer in self.layers if layer.error is not None]
        if self.error is not None:
            found.insert(0, self.error)
        return found

    @property
    def ok(self) -> bool:
        # A layer with neither verdict nor error was never judged: that is not a pass.
        return not self.errors() and all(layer.ok for layer in self.layers)

    @property
    def compressed_size(self) -> int:
        return sum(layer.descriptor.size for layer in self.layers)

    @property
    def uncompressed_size(self) -> int:
        return sum(layer.verdict.uncompressed_size for layer in self.layers if layer.verdict)


@dataclass(slots=True)
class PullResult:
    reference: str
    manifest_digest: Digest | None = None
    media_type: str | None = None
    images: list[ImageResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    error: PullVerifyError | None = None
    rate_limit: dict[str, str | None] | None = None

    def errors(self) -> list[PullVerifyError]:
        found = [e for image in self.images for e in image.errors()]
        if self.error is not None:
            found.insert(0, self.error)
        return found

    @property
    def ok(self) -> bool:
        return not self.errors() and all(image.ok for image in self.images)

    @property
    def exit_code(self) -> int:
        worst = most_severe(self.errors())
        return EXIT_OK if worst is None else worst.exit_code

    @property
    def worst_error(self) -> PullVerifyError | None:
        return most_severe(self.errors())


def human_size(n: int) -> str:
    """Decimal units, as docker prints sizes."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def layer_line(layer: LayerResult) -> str:
    short = layer.descriptor.digest.short
    error = layer.error
    if isinstance(error, IntegrityError) and error.expected and error.actual:
        return f"{short}: FAILED {error.kind}: expected {error.expected}, got {error.actual}"
    if error is not None:
        return f"{short}: FAILED {error.kind}: {error.message}"
    if layer.skipped is not None:
        return f"{short}: {layer.skipped}"
    verdict = layer.verdict
    if verdict is None:
        return f"{short}: not checked"
    retried = f", {layer.attempts} attempts" if layer.attempts > 1 else ""
    return (
        f"{short}: Verified {human_size(verdict.compressed_size)} -> "
        f"{human_size(verdict.uncompressed_size)}{retried}"
    )


def render_text(result: PullResult) -> list[str]:
    """The summary after the per-layer lines, like ``docker pull``'s last lines."""
    lines: list[str] = []
    many = len(result.images) > 1
    if result.manifest_digest is not None:
        lines.append(f"Digest: {result.manifest_digest}")
    for image in result.images:
        prefix = f"[{image.platform}] " if many and image.platform else ""
        if many and image.manifest_digest is not None:
            lines.append(f"{prefix}Digest: {image.manifest_digest}")
        if image.image_id is not None:
            lines.append(f"{prefix}Image ID: {image.image_id}")
    if result.ok:
        layers = sum(len(i.layers) for i in result.images)
        size = sum(i.compressed_size for i in result.images)
        lines.append(f"Status: Verified {result.reference} ({layers} layers, {human_size(size)})")
    else:
        errors = result.errors()
        integrity = sum(isinstance(e, IntegrityError) for e in errors)
        what = "integrity failure" if integrity else "error"
        lines.append(
            f"Status: FAILED {result.reference}: {len(errors)} {what}"
            f"{'s' if len(errors) != 1 else ''}"
        )
    return lines


def _error_json(error: PullVerifyError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    doc: dict[str, Any] = {
        "kind": error.kind,
        "message": error.message,
        "exit_code": error.exit_code,
    }
    if isinstance(error, IntegrityError):
        doc.update(
            subject=error.subject,
            expected=error.expected,
            actual=error.actual,
            bytes_read=error.bytes_read,
        )
    return doc


def _check_json(check: Check) -> dict[str, Any]:
    return {
        "name": check.name,
        "subject": check.subject,
        "expected": check.expected,
        "actual": check.actual,
        "ok": check.ok,
    }


def _layer_json(layer: LayerResult) -> dict[str, Any]:
    v = layer.verdict
    return {
        "index": layer.index,
        "media_type": layer.descriptor.media_type,
        "digest": str(layer.descriptor.digest),
        "size": layer.descriptor.size,
        "expected_diff_id": str(layer.expected_diff_id) if layer.expected_diff_id else None,
        "diff_id": str(v.diff_id) if v else None,
        "compressed_size": v.compressed_size if v else None,
        "uncompressed_size": v.uncompressed_size if v else None,
        "verified": layer.ok,
        "skipped": layer.skipped,
        "attempts": layer.attempts,
        "resumed_at": layer.resumed_at,
        "error": _error_json(layer.error),
    }


def image_fields(image: ImageResult) -> dict[str, Any]:
    """What one image is, as ``--json`` and ``puller inspect`` both show it."""
    return {
        "platform": str(image.platform) if image.platform else None,
        "digest": str(image.manifest_digest) if image.manifest_digest else None,
        "media_type": image.media_type,
        "image_id": str(image.image_id) if image.image_id else None,
        "created": image.created,
        "verified": image.ok,
        "compressed_size": image.compressed_size,
        "uncompressed_size": image.uncompressed_size,
    }


def to_json(result: PullResult) -> dict[str, Any]:
    return {
        "reference": result.reference,
        "verified": result.ok,
        "exit_code": result.exit_code,
        "digest": str(result.manifest_digest) if result.manifest_digest else None,
        "media_type": result.media_type,
        "checks": [_check_json(c) for c in result.checks],
        "error": _error_json(result.error),
        "rate_limit": result.rate_limit,
        "images": [
            {
                "reference": image.reference,
                **image_fields(image),
                "checks": [_check_json(c) for c in image.checks],
                "layers": [_layer_json(layer) for layer in image.layers],
                "error": _error_json(image.error),
            }
            for image in result.images
        ],
    }
