"""Finding kinds, exit codes, renderers, and the pure join of blob outcomes with images."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given
from hypothesis import strategies as st

from puller.audit import BlobOutcome, LayerRef, ResolvedImage, classify, layer_findings
from puller.errors import (
    AuthError,
    BlobMissing,
    DecompressionError,
    DiffIDMismatch,
    DigestMismatch,
    InvalidContent,
    NetworkError,
    NotFound,
    SizeMismatch,
)
from puller.findings import (
    INTEGRITY_KINDS,
    KINDS,
    Finding,
    Summary,
    count_by_kind,
    exit_code_for,
    finding_json,
    finding_line,
    json_line,
    summary_json,
    summary_lines,
)
from puller.htmlreport import render_html

HOST = "mirror.example:5000"


def finding(kind: str, **more: str) -> Finding:
    return Finding(reference=f"{HOST}/app:1", kind=kind, host=HOST, **more)


@given(st.lists(st.sampled_from(KINDS)))
def test_exit_code_integrity_first_then_registry_then_network(kinds: list[str]) -> None:
    code = exit_code_for(finding(k) for k in kinds)
    if any(k in INTEGRITY_KINDS for k in kinds):
        assert code == 1
    elif "registry-error" in kinds:
        assert code == 3
    elif "network-error" in kinds:
        assert code == 4
    else:
        assert code == 0


def test_json_line_carries_reference_kind_expected_actual_host() -> None:
    f = finding(
        "blob-corrupt",
        subject="layer sha256:aa",
        expected="sha256:aa",
        actual="sha256:bb",
        detail="digest",
    )
    doc = json.loads(json_line(finding_json(f)))
    assert doc["type"] == "finding"
    assert {k: doc[k] for k in ("reference", "kind", "expected", "actual", "host", "detail")} == {
        "reference": f"{HOST}/app:1",
        "kind": "blob-corrupt",
        "expected": "sha256:aa",
        "actual": "sha256:bb",
        "host": HOST,
        "detail": "digest",
    }
    assert "\n" not in json_line(finding_json(f))


def test_finding_line_shows_expected_and_actual_or_the_message() -> None:
    told = finding("stale-digest", subject="manifest", expected="sha256:up", actual="sha256:old")
    assert finding_line(told) == (
        f"FINDING stale-digest {HOST}/app:1: manifest: expected sha256:up, got sha256:old [{HOST}]"
    )
    error = finding("network-error", subject="manifest", message="cannot connect")
    assert finding_line(error).endswith(f"manifest: cannot connect [{HOST}]")


def test_summary_counts_kinds_in_a_fixed_order() -> None:
    kinds = ["network-error", "blob-corrupt", "tag-missing", "blob-corrupt"]
    counts = count_by_kind(finding(k) for k in kinds)
    assert list(counts.items()) == [("tag-missing", 1), ("blob-corrupt", 2), ("network-error", 1)]
    summary = Summary(
        images=5,
        references=4,
        unchecked=1,
        blobs=9,
        blobs_fetched=7,
        blobs_cached=2,
        bytes_fetched=123_456,
        findings_by_kind=counts,
        seconds=1.25,
        exit_code=1,
    )
    doc = summary_json(summary)
    assert doc["type"] == "summary"
    assert doc["findings"] == 4
    assert doc["findings_by_kind"] == {"tag-missing": 1, "blob-corrupt": 2, "network-error": 1}
    lines = summary_lines(summary)
    assert lines[0] == "Audited 4 references, 5 images (1 could not be checked)"
    assert lines[1] == "Blobs: 9 distinct, 7 fetched (123.5 kB), 2 verified earlier (cache)"
    assert lines[2].startswith("Status: 4 findings (tag-missing 1, blob-corrupt 2")
    headed = summary_lines(dataclasses.replace(summary, blobs_headed=6))[1]
    assert headed.endswith("2 verified earlier (cache), 6 checked per repository (HEAD)")
    assert summary_json(dataclasses.replace(summary, blobs_headed=6))["blobs_headed"] == 6


def test_errors_map_to_their_own_kinds() -> None:
    cases = [
        (BlobMissing("x"), ("blob-missing", "")),
        (DigestMismatch("x"), ("blob-corrupt", "digest")),
        (SizeMismatch("x"), ("blob-corrupt", "size")),
        (DecompressionError("x"), ("blob-corrupt", "decompression")),
        (DiffIDMismatch("x"), ("blob-corrupt", "diff-id")),
        (InvalidContent("x"), ("blob-corrupt", "content")),
        (NotFound("x"), ("registry-error", "not-found")),
        (AuthError("x"), ("registry-error", "auth-error")),
        (NetworkError("x"), ("network-error", "network-error")),
    ]
    for error, expected in cases:
        assert classify(error) == expected, error


def _image(name: str, diff_id: str) -> tuple[ResolvedImage, LayerRef]:
    layer = LayerRef("sha256:11", 10, "application/vnd.oci.image.layer.v1.tar+gzip", diff_id)
    image = ResolvedImage(f"{HOST}/{name}:1", HOST, name, "sha256:m", "", "sha256:c", (layer,))
    return image, layer


def test_join_judges_a_shared_layer_per_image() -> None:
    # Two images share a layer that verified; their configs disagree about its diff_id:
    # only the one whose config is wrong gets a finding.
    good, bad = _image("good", "sha256:d1"), _image("bad", "sha256:d2")
    verified = BlobOutcome(HOST, "sha256:11", 10, diff_id="sha256:d1", bytes_read=10)
    [found] = layer_findings(verified, [good, bad])
    assert (found.reference, found.kind, found.detail) == (
        f"{HOST}/bad:1",
        "blob-corrupt",
        "diff-id",
    )
    assert (found.expected, found.actual) == ("sha256:d2", "sha256:d1")
    # A corrupt layer is a finding in every image that uses it.
    corrupt = BlobOutcome(HOST, "sha256:11", 10, kind="blob-corrupt", detail="digest")
    assert [f.reference for f in layer_findings(corrupt, [good, bad])] == [
        f"{HOST}/good:1",
        f"{HOST}/bad:1",
    ]


def test_html_report_escapes_what_registries_send() -> None:
    hostile = finding(
        "blob-corrupt",
        subject="layer <script>alert(1)</script>",
        expected='"><img src=x>',
        actual="&amp;",
        detail="digest",
    )
    summary = Summary(1, 1, 0, 1, 1, 0, 10, {"blob-corrupt": 1}, 0.5, 1, blobs_headed=3)
    page = render_html(
        title="Audit <of> x",
        summary=summary,
        findings=[hostile],
        references=[f"{HOST}/app:1"],
        digests={f"{HOST}/app:1": "sha256:m"},
    )
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "<img" not in page
    assert "&amp;amp;" in page
    assert "<title>Audit &lt;of&gt; x</title>" in page
    assert '<td class="bad">1 finding</td>' in page
    assert "<tr><th>Layers checked per repository (HEAD)</th><td>3</td></tr>" in page
