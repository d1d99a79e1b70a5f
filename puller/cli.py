"""Command line: ``pull-verify REF`` and the multi-verb ``puller``.

Layer: the edge. No logic beyond arguments, output and exit codes. Heavy imports
(aiohttp, anyio, the pipeline) happen inside commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from puller.errors import EXIT_CODES, EXIT_INTERRUPTED, PullVerifyError, UsageError

if TYPE_CHECKING:
    from puller.pull import PullOptions
    from puller.report import ImageResult, LayerResult, PullResult

EXIT_CODE_HELP = "Exit codes: " + "; ".join(f"{e.code} {e.meaning}" for e in EXIT_CODES) + "."

app = typer.Typer(
    name="puller",
    help="Pull and verify container images: every digest, size and diff_id, in one pass.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Out = Callable[[str], None]


@app.callback()
def _root() -> None:
    """Pull and verify container images: every digest, size and diff_id, in one pass."""


def _stdout(line: str) -> None:
    typer.echo(line)


def _stderr(line: str) -> None:
    typer.echo(line, err=True)


class LinePrinter:
    """Plain progress: one line per layer when it is done, like docker pull's log output."""

    def __init__(self, out: Out) -> None:
        self.out = out

    def image_started(self, image: ImageResult) -> None:
        platform = f" ({image.platform})" if image.platform else ""
        self.out(f"Verifying {image.reference}{platform}: {len(image.layers)} layers")

    def layer_started(self, image: ImageResult, layer: LayerResult) -> None:
        return None

    def layer_advanced(self, layer: LayerResult, nbytes: int) -> None:
        return None

    def layer_finished(self, image: ImageResult, layer: LayerResult) -> None:
        from puller.report import layer_line

        self.out(layer_line(layer))

    def retrying(self, what: str, error: PullVerifyError, delay: float) -> None:
        self.out(f"{what}: {error.message}; retrying in {delay:.1f}s")


def parse_size(text: str) -> int:
    """``512M``, ``10G``, ``1073741824``: binary units, as --max-layer-size takes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in units:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        value = int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise UsageError(f"invalid size {text!r}: expected a number with K, M, G or T") from None
    if value <= 0:
        raise UsageError(f"invalid size {text!r}: must be positive")
    return value


def build_options(
    *,
    platform: str | None,
    all_platforms: bool,
    jobs: int,
    username: str | None,
    password_stdin: bool,
    insecure: list[str],
    ca_cert: list[Path],
    tls_verify: bool,
    max_layer_size: str | None,
    retries: int,
    retry_max_time: float,
    read_timeout: float,
) -> PullOptions:
    from puller.auth.tokens import Credentials
    from puller.manifest import parse_platform
    from puller.pull import DEFAULT_MAX_LAYER_SIZE, PullOptions
    from puller.retry import RetryPolicy
    from puller.transport import Timeouts, TransportOptions

    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if retries < 0:
        raise UsageError("--retries must not be negative")
    credentials = None
    if password_stdin and not username:
        raise UsageError("--password-stdin needs --username")
    if username:
        if not password_stdin:
            raise UsageError(
                "--username needs --password-stdin (passwords are not taken as "
                "arguments, where other users could read them)"
            )
        password = sys.stdin.readline().rstrip("\r\n")
        credentials = Credentials(username, password)
    return PullOptions(
        platform=parse_platform(platform) if platform else None,
        all_platforms=all_platforms,
        jobs=jobs,
        max_layer_size=parse_size(max_layer_size) if max_layer_size else DEFAULT_MAX_LAYER_SIZE,
        retry=RetryPolicy(attempts=retries + 1, total=retry_max_time),
        transport=TransportOptions(
            insecure_hosts=frozenset(insecure),
            ca_files=tuple(ca_cert),
            tls_verify=tls_verify,
            timeouts=Timeouts(sock_read=read_timeout),
        ),
        credentials=credentials,
    )


def run_async(fn: Callable[[], object]) -> object:
    import anyio

    try:
        import uvloop  # noqa: F401
    except ImportError:
        backend_options: dict[str, object] = {}
    else:
        backend_options = {"use_uvloop": True}
    return anyio.run(fn, backend="asyncio", backend_options=backend_options)  # type: ignore[arg-type]


def verify_command(
    reference: Annotated[
        str, typer.Argument(help="Image reference: [registry/]repo[:tag][@digest]")
    ],
    platform: Annotated[
        str | None, typer.Option(help="Platform to verify from an index: os/arch[/variant].")
    ] = None,
    all_platforms: Annotated[
        bool, typer.Option("--all-platforms", help="Verify every platform in an index.")
    ] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Layers downloaded at once.")] = 4,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document with every check.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the digest.")] = False,
    username: Annotated[str | None, typer.Option("--username", "-u")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    insecure: Annotated[
        list[str] | None,
        typer.Option("--insecure", help="Allow plain HTTP to this host (repeatable)."),
    ] = None,
    ca_cert: Annotated[
        list[Path] | None, typer.Option("--ca-cert", help="Extra CA certificate (repeatable).")
    ] = None,
    tls_verify: Annotated[
        bool, typer.Option("--tls-verify/--no-tls-verify", help="Verify TLS certificates.")
    ] = True,
    max_layer_size: Annotated[
        str | None,
        typer.Option(help="Refuse layers that inflate beyond this (e.g. 20G). Default 64G."),
    ] = None,
    retries: Annotated[int, typer.Option(help="Retries of transient failures per request.")] = 4,
    retry_max_time: Annotated[
        float, typer.Option(help="Give up retrying a request after this many seconds.")
    ] = 120.0,
    read_timeout: Annotated[
        float, typer.Option(help="Seconds without a byte before a download counts as stalled.")
    ] = 30.0,
) -> None:
    """Verify an image: manifest digest, config, every layer's digest, size and diff_id."""
    code = _verify(
        reference,
        out=_stdout,
        err=_stderr,
        json_output=json_output,
        quiet=quiet,
        options_factory=lambda: build_options(
            platform=platform,
            all_platforms=all_platforms,
            jobs=jobs,
            username=username,
            password_stdin=password_stdin,
            insecure=insecure or [],
            ca_cert=ca_cert or [],
            tls_verify=tls_verify,
            max_layer_size=max_layer_size,
            retries=retries,
            retry_max_time=retry_max_time,
            read_timeout=read_timeout,
        ),
    )
    raise typer.Exit(code)


def _verify(
    text: str,
    *,
    out: Out,
    err: Out,
    json_output: bool,
    quiet: bool,
    options_factory: Callable[[], PullOptions],
) -> int:
    from puller.pull import pull_verify
    from puller.reference import parse_reference
    from puller.report import PullResult, render_text, to_json

    try:
        reference = parse_reference(text)
        options = options_factory()
        if not options.transport.tls_verify:
            err("warning: TLS certificate verification is off (--no-tls-verify)")
    except PullVerifyError as exc:
        err(f"pull-verify: {exc.message}")
        return exc.exit_code
    printer = LinePrinter(out if not (json_output or quiet) else (lambda _line: None))

    async def main() -> PullResult:
        return await pull_verify(reference, options, progress=printer)

    try:
        result = run_async(main)
    except KeyboardInterrupt:
        err("pull-verify: interrupted")
        return EXIT_INTERRUPTED
    assert isinstance(result, PullResult)
    if json_output:
        out(json.dumps(to_json(result), indent=2))
    elif quiet:
        if result.manifest_digest is not None and result.ok:
            out(str(result.manifest_digest))
    else:
        for line in render_text(result):
            out(line)
    worst = result.worst_error
    if worst is not None and not json_output:
        err(f"pull-verify: {worst.message}")
    return result.exit_code


app.command(name="verify", epilog=EXIT_CODE_HELP)(verify_command)

verify_app = typer.Typer(
    name="pull-verify",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
verify_app.command(epilog=EXIT_CODE_HELP)(verify_command)


def main() -> None:
    app()


def verify_main() -> None:
    verify_app()


def _register_verbs() -> None:
    """Import the verb modules so their @app.command decorators run."""
    from puller.commands import register_all

    register_all(app)


_register_verbs()
