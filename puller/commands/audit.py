"""``puller audit``: does a mirror serve exactly what upstream serves?

Layer: the edge. Arguments, output and exit codes only; the work is in ``puller.audit``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from puller.commands.options import (
    CaCertOpt,
    InsecureOpt,
    ReadTimeoutOpt,
    RetriesOpt,
    TlsVerifyOpt,
)
from puller.errors import EXIT_INTERRUPTED, PullVerifyError, UsageError

if TYPE_CHECKING:
    from puller.audit import AuditReport, AuditSettings
    from puller.findings import Finding

Out = Callable[[str], None]

AUDIT_EPILOG = (
    "Exit codes: 0 clean; 1 any integrity finding (tag missing, stale digest, manifest or "
    "blob not as claimed); 2 usage error; 3 images could not be checked (registry or auth "
    "error); 4 images could not be checked (network error); 130 interrupted."
)


class _Printer:
    """Findings as they happen: JSON lines or readable lines; a progress bar on a terminal."""

    def __init__(self, out: Out, *, json_output: bool, bar: Any | None) -> None:
        self.out = out
        self.json_output = json_output
        self.bar = bar
        self._task: Any | None = None

    def phase(self, name: str, total: int) -> None:
        if self.bar is None:
            return
        if self._task is not None:
            self.bar.remove_task(self._task)
        self._task = self.bar.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None and self._task is not None:
            self.bar.advance(self._task, n)

    def finding(self, finding: Finding) -> None:
        from puller.findings import finding_json, finding_line, json_line

        self.out(json_line(finding_json(finding)) if self.json_output else finding_line(finding))


def _read_lines(path: Path) -> list[str]:
    try:
        if str(path) == "-":
            return sys.stdin.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read references from {path}: {exc}") from exc


def _write_atomically(path: Path, text: str) -> None:
    """Write beside the target and rename: no half-written report under the real name."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _html(report: AuditReport, path: Path, title: str) -> None:
    from puller.htmlreport import render_html

    digests: dict[str, list[str]] = {}
    for image in report.images:
        digests.setdefault(image.reference.split(" [", 1)[0], []).append(image.manifest_digest)
    text = render_html(
        title=title,
        summary=report.summary,
        findings=report.findings,
        references=[t.reference for t in report.targets],
        digests={ref: ", ".join(ds) for ref, ds in digests.items()},
    )
    try:
        _write_atomically(path, text)
    except OSError as exc:
        raise UsageError(f"cannot write the HTML report {path}: {exc}") from exc


def run_audit_command(
    *,
    refs_file: Path | None,
    catalog: str | None,
    repo_globs: list[str],
    settings_factory: Callable[[], AuditSettings],
    json_output: bool,
    html: Path | None,
    cache_path: Path | None,
    max_age: str | None,
    recheck: bool,
    page_size: int,
    out: Out,
    err: Out,
    progress_bar: bool,
) -> int:
    from puller.audit import enumerate_catalog, run_audit, targets_from_lines
    from puller.auditcache import AuditCache, parse_duration
    from puller.cli import run_async
    from puller.findings import json_line, summary_json, summary_lines

    cache: AuditCache | None = None
    try:
        if (refs_file is None) == (catalog is None):
            raise UsageError("give either a file of references or --catalog REGISTRY")
        if page_size < 1:
            raise UsageError("--catalog-page-size must be at least 1")
        settings = settings_factory()
        if settings.upstream and not settings.mirror:
            raise UsageError("--upstream needs --mirror: the registry to compare with it")
        if settings.per_registry < 1:
            raise UsageError("--per-registry must be at least 1")
        lines = _read_lines(refs_file) if refs_file is not None else []
        targets = targets_from_lines(lines, settings, str(refs_file)) if refs_file else []
        if cache_path is not None:
            cache = AuditCache(
                cache_path,
                max_age=parse_duration(max_age) if max_age else None,
                recheck=recheck,
            )
    except PullVerifyError as exc:
        err(f"puller audit: {exc.message}")
        return exc.exit_code

    bar = None
    if progress_bar and not json_output:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
    printer = _Printer(out, json_output=json_output, bar=bar)

    async def main() -> AuditReport:
        found_early: list[Finding] = []
        wanted = targets
        if catalog is not None:
            wanted, found_early = await enumerate_catalog(
                catalog, settings, repo_globs=repo_globs, page_size=page_size, observer=printer
            )
        return await run_audit(
            wanted, settings, cache=cache, observer=printer, early_findings=found_early
        )

    try:
        if bar is not None:
            with bar:
                report = run_async(main)
        else:
            report = run_async(main)
    except KeyboardInterrupt:
        err("puller audit: interrupted (verified blobs so far are kept in the cache)")
        return EXIT_INTERRUPTED
    except PullVerifyError as exc:
        err(f"puller audit: {exc.message}")
        return exc.exit_code
    finally:
        if cache is not None:
            cache.close()
            if cache.problem is not None:
                err(
                    f"warning: the audit cache {cache.path} failed and was not used further: "
                    f"{cache.problem}"
                )
    from puller.audit import AuditReport

    assert isinstance(report, AuditReport)
    summary = report.summary
    if json_output:
        out(json_line(summary_json(summary)))
    else:
        for line in summary_lines(summary):
            out(line)
    if html is not None:
        where = settings.mirror or catalog or "registry"
        try:
            _html(report, html, f"Mirror audit of {where}")
        except PullVerifyError as exc:
            err(f"puller audit: {exc.message}")
            return exc.exit_code
    return summary.exit_code


def audit_command(
    refs_file: Annotated[
        Path | None,
        typer.Argument(help="File of references, one per line, # comments ('-' for stdin)."),
    ] = None,
    catalog: Annotated[
        str | None,
        typer.Option(help="Walk this registry's /v2/_catalog and every repository's tags."),
    ] = None,
    repo: Annotated[
        list[str] | None,
        typer.Option("--repo", help="Only repositories matching this glob (repeatable)."),
    ] = None,
    mirror: Annotated[
        str | None, typer.Option(help="The registry host audited (the mirror).")
    ] = None,
    upstream: Annotated[
        str | None, typer.Option(help="Compare every tag with this registry host.")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Requests in flight in all.")] = 8,
    per_registry: Annotated[int, typer.Option(help="Requests in flight per registry host.")] = 4,
    json_output: Annotated[
        bool, typer.Option("--json", help="JSON lines: each finding, then the summary.")
    ] = False,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report.")] = None,
    cache: Annotated[
        Path | None, typer.Option(help="SQLite record of verified blobs (incremental audits).")
    ] = None,
    max_age: Annotated[
        str | None,
        typer.Option(help="Trust cached verifications younger than this (30m, 12h, 7d)."),
    ] = None,
    recheck: Annotated[
        bool, typer.Option("--recheck", help="Fetch every blob even if the cache has it.")
    ] = False,
    catalog_page_size: Annotated[
        int, typer.Option(help="Repositories asked for per catalog page.")
    ] = 1000,
    insecure: InsecureOpt = None,
    ca_cert: CaCertOpt = None,
    tls_verify: TlsVerifyOpt = True,
    retries: RetriesOpt = 4,
    read_timeout: ReadTimeoutOpt = 30.0,
) -> None:
    """Audit images on a registry: every manifest, config and layer, each blob once."""

    def settings() -> AuditSettings:
        from puller.audit import AuditSettings
        from puller.cli import build_options

        return AuditSettings(
            mirror=mirror,
            upstream=upstream,
            jobs=jobs,
            per_registry=per_registry,
            pull=build_options(
                platform=None,
                all_platforms=True,
                jobs=jobs,
                username=None,
                password_stdin=False,
                insecure=insecure or [],
                ca_cert=ca_cert or [],
                tls_verify=tls_verify,
                max_layer_size=None,
                retries=retries,
                retry_max_time=120.0,
                read_timeout=read_timeout,
            ),
        )

    code = run_audit_command(
        refs_file=refs_file,
        catalog=catalog,
        repo_globs=repo or [],
        settings_factory=settings,
        json_output=json_output,
        html=html,
        cache_path=cache,
        max_age=max_age,
        recheck=recheck,
        page_size=catalog_page_size,
        out=typer.echo,
        err=lambda line: typer.echo(line, err=True),
        progress_bar=sys.stderr.isatty(),
    )
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command(name="audit", epilog=AUDIT_EPILOG)(audit_command)
