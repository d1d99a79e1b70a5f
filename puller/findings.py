"""What a mirror audit finds, and how it is told: one line, one JSON object, a summary.

Layer: pure (no I/O). Every value here is plain data (strings and ints) so that findings
can cross process boundaries unchanged; renderers return strings and dicts.

Kinds, each its own (the exit code they lead to in brackets):

    tag-missing        [1] upstream has the tag, the mirror does not serve it
    stale-digest       [1] the mirror's tag names another manifest than upstream's
    manifest-mismatch  [1] manifest bytes do not hash to their digest / Docker-Content-Digest
    blob-missing       [1] a blob the manifest names is not served (by its repository)
    blob-corrupt       [1] a blob is served wrong: detail says digest, size, decompression,
                           diff-id, or content (a malformed config)
    registry-error     [3] the registry refused or did not have what we asked (image unchecked)
    network-error      [4] no usable answer from the host (image unchecked)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from puller.errors import EXIT_INTEGRITY, EXIT_NETWORK, EXIT_OK, EXIT_REGISTRY
from puller.report import human_size

TAG_MISSING = "tag-missing"
STALE_DIGEST = "stale-digest"
MANIFEST_MISMATCH = "manifest-mismatch"
BLOB_MISSING = "blob-missing"
BLOB_CORRUPT = "blob-corrupt"
REGISTRY_ERROR = "registry-error"
NETWORK_ERROR = "network-error"

INTEGRITY_KINDS = frozenset(
    {TAG_MISSING, STALE_DIGEST, MANIFEST_MISMATCH, BLOB_MISSING, BLOB_CORRUPT}
)
KINDS: tuple[str, ...] = (
    TAG_MISSING,
    STALE_DIGEST,
    MANIFEST_MISMATCH,
    BLOB_MISSING,
    BLOB_CORRUPT,
    REGISTRY_ERROR,
    NETWORK_ERROR,
)
_EXIT_FOR_KIND = {REGISTRY_ERROR: EXIT_REGISTRY, NETWORK_ERROR: EXIT_NETWORK}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong with one image as one host served it."""

    reference: str  # the image audited, as the user named it (host/repo:tag [platform])
    kind: str
    host: str  # the registry that served (or failed to serve) the subject
    subject: str = ""  # what was checked: "manifest", "blob sha256:...", "config sha256:..."
    expected: str = ""
    actual: str = ""
    detail: str = ""  # for blob-corrupt: digest, size, decompression, diff-id, content
    message: str = ""

    @property
    def is_integrity(self) -> bool:
        return self.kind in INTEGRITY_KINDS

    @property
    def exit_code(self) -> int:
        return EXIT_INTEGRITY if self.is_integrity else _EXIT_FOR_KIND.get(self.kind, EXIT_REGISTRY)


def exit_code_for(findings: Iterable[Finding]) -> int:
    """0 clean; 1 any integrity finding; else 3 (registry) before 4 (network)."""
    codes = {f.exit_code for f in findings}
    for code in (EXIT_INTEGRITY, EXIT_REGISTRY, EXIT_NETWORK):
        if code in codes:
            return code
    return EXIT_OK


def finding_json(finding: Finding) -> dict[str, str]:
    return {
        "type": "finding",
        "reference": finding.reference,
        "kind": finding.kind,
        "detail": finding.detail,
        "subject": finding.subject,
        "expected": finding.expected,
        "actual": finding.actual,
        "host": finding.host,
        "message": finding.message,
    }


def finding_line(finding: Finding) -> str:
    """``FINDING blob-corrupt (digest) ref: blob sha256:..: expected X, got Y [host]``."""
    kind = f"{finding.kind} ({finding.detail})" if finding.detail else finding.kind
    what = f"{finding.reference}: {finding.subject}" if finding.subject else finding.reference
    if finding.expected or finding.actual:
        told = f"expected {finding.expected or '-'}, got {finding.actual or '-'}"
    else:
        told = finding.message
    return f"FINDING {kind} {what}: {told} [{finding.host}]"


@dataclass(frozen=True, slots=True)
class Summary:
    """The totals of one audit run."""

    images: int  # image manifests resolved (every platform of an index counts)
    references: int  # references enumerated
    unchecked: int  # references that could not be checked (registry or network error)
    blobs: int  # distinct blobs (configs and layers)
    blobs_fetched: int
    blobs_cached: int  # verified within --max-age by an earlier run: not fetched
    bytes_fetched: int
    findings_by_kind: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    exit_code: int = EXIT_OK
    blobs_headed: int = 0  # (repository, layer) pairs asked for with a HEAD, not fetched

    @property
    def findings(self) -> int:
        return sum(self.findings_by_kind.values())


def count_by_kind(findings: Iterable[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    return {kind: counts[kind] for kind in sorted(counts, key=_kind_order)}


def _kind_order(kind: str) -> tuple[int, str]:
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), kind)


def summary_json(summary: Summary) -> dict[str, Any]:
    return {
        "type": "summary",
        "references": summary.references,
        "images": summary.images,
        "unchecked": summary.unchecked,
        "blobs": summary.blobs,
        "blobs_fetched": summary.blobs_fetched,
        "blobs_cached": summary.blobs_cached,
        "blobs_headed": summary.blobs_headed,
        "bytes_fetched": summary.bytes_fetched,
        "findings": summary.findings,
        "findings_by_kind": dict(summary.findings_by_kind),
        "seconds": round(summary.seconds, 3),
        "exit_code": summary.exit_code,
    }


def summary_lines(summary: Summary) -> list[str]:
    by_kind = ", ".join(f"{kind} {n}" for kind, n in summary.findings_by_kind.items())
    noun = "finding" if summary.findings == 1 else "findings"
    status = "clean" if summary.findings == 0 else f"{summary.findings} {noun} ({by_kind})"
    headed = f", {summary.blobs_headed} checked per repository (HEAD)"
    return [
        f"Audited {summary.references} references, {summary.images} images"
        + (f" ({summary.unchecked} could not be checked)" if summary.unchecked else ""),
        f"Blobs: {summary.blobs} distinct, {summary.blobs_fetched} fetched "
        f"({human_size(summary.bytes_fetched)}), {summary.blobs_cached} verified earlier (cache)"
        + (headed if summary.blobs_headed else ""),
        f"Status: {status} in {summary.seconds:.1f}s",
    ]


def json_line(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False)
