"""The checks on manifests and small blobs held whole, shared by every verb that fetches them.

Layer: pure (no I/O). Each function records the ``Check`` it made in ``checks`` (whether it
passed or not) and raises the typed integrity error when it failed, so ``pull-verify``,
``puller manifest``/``config`` and the audit judge the same bytes the same way.
"""

from __future__ import annotations

from puller.digest import Digest, parse_digest
from puller.errors import (
    ContentDigestMismatch,
    DigestMismatch,
    InvalidContent,
    SizeMismatch,
)
from puller.imageconfig import MAX_CONFIG_BYTES
from puller.manifest import Descriptor
from puller.report import Check
from puller.verify import BlobVerifier


def check_manifest(
    data: bytes,
    *,
    subject: str,
    pinned: Digest | None,
    content_digest: str | None,
    checks: list[Check],
) -> Digest:
    """The digest of the exact bytes served, checked against the pin and the header.

    The pin's algorithm decides the digest reported; without a pin, the header's.
    """
    header = None
    if content_digest:
        header = parse_digest(content_digest, what="Docker-Content-Digest")
    algorithm = pinned.algorithm if pinned else header.algorithm if header else "sha256"
    actual = Digest.of(data, algorithm)
    if pinned is not None:
        ok = actual == pinned
        checks.append(Check("manifest-digest", subject, str(pinned), str(actual), ok))
        if not ok:
            raise DigestMismatch(
                f"{subject}: served manifest hashes to {actual}, not the pinned {pinned}",
                subject=subject,
                expected=str(pinned),
                actual=str(actual),
                bytes_read=len(data),
            )
    if header is not None:
        served = actual if header.algorithm == algorithm else Digest.of(data, header.algorithm)
        ok = served == header
        checks.append(Check("docker-content-digest", subject, str(header), str(served), ok))
        if not ok:
            raise ContentDigestMismatch(
                f"{subject}: registry claims Docker-Content-Digest {header} but the bytes "
                f"it served hash to {served}",
                subject=subject,
                expected=str(header),
                actual=str(served),
                bytes_read=len(data),
            )
    return actual


def check_child(entry: Descriptor, data: bytes, *, subject: str, checks: list[Check]) -> None:
    """An index entry's manifest: the digest and size the index gave."""
    actual = Digest.of(data, entry.digest.algorithm)
    checks.append(
        Check("manifest-digest", subject, str(entry.digest), str(actual), actual == entry.digest)
    )
    if actual != entry.digest or len(data) != entry.size:
        cls = DigestMismatch if actual != entry.digest else SizeMismatch
        raise cls(
            f"{subject}: index names {entry.digest} ({entry.size} bytes), registry "
            f"served {actual} ({len(data)} bytes)",
            subject=subject,
            expected=str(entry.digest),
            actual=str(actual),
            bytes_read=len(data),
        )


def check_config_size(descriptor: Descriptor, *, subject: str) -> None:
    """Refuse an absurd config before a byte of it is fetched."""
    if descriptor.size > MAX_CONFIG_BYTES:
        raise InvalidContent(
            f"{subject}: {descriptor.size} bytes is over the {MAX_CONFIG_BYTES} byte limit "
            "for a config",
            subject=subject,
            expected=f"<={MAX_CONFIG_BYTES} bytes",
            actual=f"{descriptor.size} bytes",
        )


def check_config(descriptor: Descriptor, data: bytes, *, subject: str, checks: list[Check]) -> None:
    """A config blob held whole: its digest and size against its descriptor."""
    expected = descriptor.digest
    verifier = BlobVerifier(expected, descriptor.size, subject)
    try:
        verifier.update(data)
        actual = verifier.finish()
    except DigestMismatch as exc:
        checks.append(Check("config-digest", subject, str(expected), str(exc.actual), False))
        raise
    except SizeMismatch:
        # The size is wrong; the digest may still be right, and the check says which.
        actual = Digest.of(data, expected.algorithm)
        checks.append(
            Check("config-digest", subject, str(expected), str(actual), actual == expected)
        )
        raise
    checks.append(Check("config-digest", subject, str(expected), str(actual), True))
