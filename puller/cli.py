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

from puller.commands.options import (
    CaCertOpt,
    InsecureOpt,
    PasswordStdinOpt,
    ReadTimeoutOpt,
    RetriesOpt,
    RetryMaxTimeOpt,
    UsernameOpt,
)
from puller.errors import EXIT_CODES, EXIT_INTERRUPTED, PullVerifyError, UsageError

if TYPE_CHECKING:
    from puller.pull import PullOptions
    from puller.report import ImageResult, LayerResult, PullResult
    from puller.store import OutputOptions

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


def parse_tls_verify(text: str) -> bool:
    """``--tls-verify=false`` as skopeo and podman spell it."""
    word = text.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"--tls-verify takes true or false, not {text!r}")


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
    cert_dir: Path | None = None,
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
        max_layer_size=(
            parse_size(max_layer_size) if max_layer_size is not None else DEFAULT_MAX_LAYER_SIZE
        ),
        retry=RetryPolicy(attempts=retries + 1, total=retry_max_time),
        transport=TransportOptions(
            insecure_hosts=frozenset(insecure),
            ca_files=tuple(ca_cert),
            tls_verify=tls_verify,
            timeouts=Timeouts(sock_read=read_timeout),
            cert_dir=cert_dir,
        ),
        credentials=credentials,
    )


def build_output_options(
    *, output: Path | None, fmt: str, store: Path | None, keep: bool, reverify: bool
) -> OutputOptions | None:
    """Where verified content goes; None keeps plain verification write-free."""
    if output is None and store is None and not keep and not reverify and fmt == "oci":
        return None  # and the store module is never imported
    from puller.store import OutputOptions, default_store_path

    if store is None and keep:
        store = default_store_path()
    return OutputOptions(output=output, format=fmt, store=store, reverify=reverify)  # type: ignore[arg-type]


def describe_output(sink: object, result: PullResult) -> list[str]:
    """What was written where, and stored blobs that failed --reverify."""
    from puller.store import describe_sink

    return describe_sink(sink, ok=result.ok)


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
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    insecure: InsecureOpt = None,
    ca_cert: CaCertOpt = None,
    tls_verify: Annotated[
        str,
        typer.Option(
            "--tls-verify",
            metavar="BOOL",
            help="Verify TLS certificates: true (default), or false (warns).",
        ),
    ] = "true",
    no_tls_verify: Annotated[
        bool, typer.Option("--no-tls-verify", help="The same as --tls-verify=false.")
    ] = False,
    cert_dir: Annotated[
        Path | None,
        typer.Option(
            "--cert-dir",
            help="Use *.crt (CAs), *.cert and *.key (client) from this directory "
            "instead of /etc/docker/certs.d/HOST[:PORT]/.",
        ),
    ] = None,
    max_layer_size: Annotated[
        str | None,
        typer.Option(help="Refuse layers that inflate beyond this (e.g. 20G). Default 64G."),
    ] = None,
    retries: RetriesOpt = 4,
    retry_max_time: RetryMaxTimeOpt = 120.0,
    read_timeout: ReadTimeoutOpt = 30.0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the verified image: an OCI layout DIR, "
            "or FILE.tar with --format docker-archive.",
        ),
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="What --output writes: oci or docker-archive.")
    ] = "oci",
    store: Annotated[
        Path | None,
        typer.Option(help="Keep the image in this content store (an OCI layout of many images)."),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the image in the default store (XDG data dir).")
    ] = False,
    reverify: Annotated[
        bool,
        typer.Option("--reverify", help="Re-hash layers already stored instead of trusting them."),
    ] = False,
) -> None:
    """Verify an image: manifest digest, config, every layer's digest, size and diff_id."""
    code = _verify(
        reference,
        out=_stdout,
        err=_stderr,
        json_output=json_output,
        quiet=quiet,
        output_factory=lambda: build_output_options(
            output=output, fmt=output_format, store=store, keep=keep, reverify=reverify
        ),
        options_factory=lambda: build_options(
            platform=platform,
            all_platforms=all_platforms,
            jobs=jobs,
            username=username,
            password_stdin=password_stdin,
            insecure=insecure or [],
            ca_cert=ca_cert or [],
            tls_verify=parse_tls_verify(tls_verify) and not no_tls_verify,
            max_layer_size=max_layer_size,
            retries=retries,
            retry_max_time=retry_max_time,
            read_timeout=read_timeout,
            cert_dir=cert_dir,
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
    output_factory: Callable[[], OutputOptions | None] = lambda: None,
) -> int:
    from puller.pull import pull_verify
    from puller.reference import parse_reference
    from puller.report import PullResult, render_text, to_json

    try:
        reference = parse_reference(text)
        options = options_factory()
        outputs = output_factory()
        if outputs is not None:
            outputs.check(all_platforms=options.all_platforms)
        if not options.transport.tls_verify:
            err("warning: TLS certificate verification is off (--tls-verify=false)")
    except PullVerifyError as exc:
        err(f"pull-verify: {exc.message}")
        return exc.exit_code
    printer = LinePrinter(out if not (json_output or quiet) else (lambda _line: None))
    # Live rich lines only on a terminal; pipes and logs get LinePrinter's plain lines.
    terminal = out is _stdout and not (json_output or quiet) and sys.stdout.isatty()

    saved: list[str] = []

    async def main() -> PullResult:
        if outputs is None:
            return await pull_verify(reference, options, progress=progress)
        from puller.store import open_output

        try:
            async with open_output(outputs) as sink:
                done = await pull_verify(reference, options, sink=sink, progress=progress)
                saved.extend(describe_output(sink, done))
                return done
        except PullVerifyError as exc:
            return PullResult(reference=str(reference), error=exc)

    try:
        from puller.progress import open_progress

        with open_progress(printer, terminal=terminal) as progress:
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
        for line in saved:
            out(line)
        if result.rate_limit:
            # Docker Hub's pull quota, as its RateLimit-* headers gave it.
            left, limit = result.rate_limit.get("remaining"), result.rate_limit.get("limit")
            err(f"Rate limit: {left or '?'} remaining of {limit or '?'}")
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
