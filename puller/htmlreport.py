"""A self-contained HTML report of an audit: one file, no scripts, no external resources.

Layer: pure (no I/O): ``render_html`` returns the document; the command writes it (under a
temporary name, renamed when complete). Every value from a registry is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape

from puller.findings import INTEGRITY_KINDS, Finding, Summary

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
code{font:12px ui-monospace,monospace;word-break:break-all}
.ok{color:#17692c}.bad{color:#a4161a;font-weight:600}.warn{color:#8a5a00;font-weight:600}
tr.integrity td.kind{color:#a4161a;font-weight:600}
tr.unchecked td.kind{color:#8a5a00;font-weight:600}
"""


def _cell(text: str, *, code: bool = False, cls: str = "") -> str:
    body = f"<code>{escape(text)}</code>" if code and text else escape(text)
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{body}</td>"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _summary_rows(summary: Summary) -> list[str]:
    rows = [
        ("References", str(summary.references)),
        ("Images (platforms)", str(summary.images)),
        ("Could not be checked", str(summary.unchecked)),
        ("Distinct blobs", str(summary.blobs)),
        ("Blobs fetched", str(summary.blobs_fetched)),
        ("Blobs verified earlier (cache)", str(summary.blobs_cached)),
        ("Layers checked per repository (HEAD)", str(summary.blobs_headed)),
        ("Bytes fetched", str(summary.bytes_fetched)),
        ("Time", f"{summary.seconds:.1f} s"),
        ("Exit code", str(summary.exit_code)),
    ]
    rows += [(f"Findings: {kind}", str(n)) for kind, n in summary.findings_by_kind.items()]
    return [f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows]


def _finding_row(finding: Finding) -> str:
    cls = "integrity" if finding.kind in INTEGRITY_KINDS else "unchecked"
    kind = finding.kind + (f" ({finding.detail})" if finding.detail else "")
    return (
        f'<tr class="{cls}" data-kind="{escape(finding.kind)}">'
        + _cell(finding.reference, code=True)
        + _cell(kind, cls="kind")
        + _cell(finding.subject, code=True)
        + _cell(finding.expected, code=True)
        + _cell(finding.actual, code=True)
        + _cell(finding.host, code=True)
        + "</tr>"
    )


def render_html(
    *,
    title: str,
    summary: Summary,
    findings: Sequence[Finding],
    references: Iterable[str],
    digests: Mapping[str, str],
) -> str:
    """The report. ``digests`` maps a reference to the manifest digest the mirror served."""
    by_reference: dict[str, list[Finding]] = {}
    for finding in findings:
        root = finding.reference.split(" [", 1)[0]
        by_reference.setdefault(root, []).append(finding)
    verdict = (
        '<p id="verdict" class="ok">Clean: every image is served as claimed.</p>'
        if not findings
        else f'<p id="verdict" class="bad">{_count(len(findings), "finding")}.</p>'
    )
    image_rows: list[str] = []
    for reference in references:
        mine = by_reference.get(reference, [])
        if not mine:
            status = '<td class="ok">ok</td>'
        elif any(f.kind in INTEGRITY_KINDS for f in mine):
            status = f'<td class="bad">{_count(len(mine), "finding")}</td>'
        else:
            status = '<td class="warn">not checked</td>'
        image_rows.append(
            f'<tr data-reference="{escape(reference)}">'
            + _cell(reference, code=True)
            + status
            + _cell(digests.get(reference, ""), code=True)
            + "</tr>"
        )
    finding_rows = [_finding_row(f) for f in findings] or [
        '<tr><td colspan="6">No findings.</td></tr>'
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            verdict,
            '<h2>Summary</h2><table id="summary">',
            *_summary_rows(summary),
            "</table>",
            '<h2>Findings</h2><table id="findings"><thead><tr><th>Reference</th><th>Kind</th>'
            "<th>Subject</th><th>Expected</th><th>Actual</th><th>Host</th></tr></thead><tbody>",
            *finding_rows,
            "</tbody></table>",
            '<h2>Images</h2><table id="images"><thead><tr><th>Reference</th><th>Status</th>'
            "<th>Manifest digest</th></tr></thead><tbody>",
            *image_rows,
            "</tbody></table>",
            "</body></html>",
            "",
        ]
    )
