"""``puller manifest``, ``puller config``, ``puller tags``: what curl and jq are used for.

Layer: the edge (typer commands) over the registry client. Every byte printed is verified
first: a manifest against its pin, the ``Docker-Content-Digest`` header and (for an index
child) the index entry; a config against its descriptor. Bytes go to stdout unchanged, so
``puller manifest REF | sha256sum`` prints the manifest digest.

The helpers here (common options, ``fetch_manifest``, ``resolve_image``) are shared with
the other verbs of this package; the checks themselves are ``puller.pull``'s.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from puller.commands.options import (
    CaCertOpt,
    InsecureOpt,
    PasswordStdinOpt,
    PlatformOpt,
    TlsVerifyOpt,
    UsernameOpt,
)
from puller.errors import EXIT_INTERRUPTED, PullVerifyError, UsageError

if TYPE_CHECKING:
    from puller.digest import Digest
    from puller.manifest import Descriptor, ImageIndex, ImageManifest, Platform
    from puller.pull import PullOptions
    from puller.reference import Reference
    from puller.registry import RegistryClient

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Connection:
    """What the command line says about reaching a registry."""

    username: str | None = None
    password_stdin: bool = False
    insecure: tuple[str, ...] = ()
    ca_cert: tuple[Path, ...] = ()
    tls_verify: bool = True
    platform: str | None = None

    def options(self, *, jobs: int = 4, all_platforms: bool = False) -> PullOptions:
        from puller.cli import build_options

        return build_options(
            platform=self.platform,
            all_platforms=all_platforms,
            jobs=jobs,
            username=self.username,
            password_stdin=self.password_stdin,
            insecure=list(self.insecure),
            ca_cert=list(self.ca_cert),
            tls_verify=self.tls_verify,
            max_layer_size=None,
            retries=4,
            retry_max_time=120.0,
            read_timeout=30.0,
        )


def err(line: str) -> None:
    typer.echo(line, err=True)


def run_verb(main: Callable[[], Awaitable[T]]) -> T:
    """Run an async verb; a PullVerifyError becomes one line on stderr and its exit code."""
    from puller.cli import run_async

    try:
        return run_async(main)  # type: ignore[return-value]
    except PullVerifyError as exc:
        err(f"puller: {exc.message}")
        raise typer.Exit(exc.exit_code) from exc
    except KeyboardInterrupt:
        err("puller: interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def fail(exc: PullVerifyError) -> typer.Exit:
    err(f"puller: {exc.message}")
    return typer.Exit(exc.exit_code)


def parse_ref(text: str) -> Reference:
    from puller.reference import parse_reference

    try:
        return parse_reference(text)
    except PullVerifyError as exc:
        raise fail(exc) from exc


def write_stdout_bytes(data: bytes) -> None:
    sys.stdout.flush()  # anything printed as text goes first
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# -- verified fetches ----------------------------------------------------------------------


async def fetch_manifest(client: RegistryClient, reference: Reference) -> tuple[bytes, Digest]:
    """The manifest exactly as served, checked against the pin and Docker-Content-Digest."""
    from puller import pull

    fetched, digest = await pull.fetch_manifest(client, reference, [])
    return fetched.data, digest


async def fetch_child(client: RegistryClient, reference: Reference, entry: Descriptor) -> bytes:
    """An index entry's manifest, checked against the digest and size the index gave."""
    from puller import pull

    subject = f"manifest {reference.registry}/{reference.repository}@{entry.digest}"
    fetched = await pull.fetch_child(client, reference.repository, entry, subject, [])
    return fetched.data


def choose(index: ImageIndex, platform: Platform | None) -> Descriptor:
    from puller.manifest import choose_platform, host_platform

    return choose_platform(index, platform or host_platform())


async def resolve_image(
    client: RegistryClient, reference: Reference, platform: Platform | None
) -> ImageManifest:
    """The image manifest a reference names, an index resolved to ``platform``'s entry."""
    from puller import pull
    from puller.manifest import ImageManifest, parse_manifest

    fetched, _digest = await pull.fetch_manifest(client, reference, [])
    with pull.naming(f"manifest {reference}"):
        manifest = parse_manifest(fetched.data, fetched.content_type)
    if isinstance(manifest, ImageManifest):
        return manifest
    entry = choose(manifest, platform)
    subject = f"manifest {reference.registry}/{reference.repository}@{entry.digest}"
    child = await pull.fetch_child(client, reference.repository, entry, subject, [])
    return pull.parse_image_manifest(child, subject)


async def with_client(
    reference: Reference,
    options: PullOptions,
    body: Callable[[RegistryClient], Awaitable[T]],
) -> T:
    from puller.pull import connect
    from puller.transport import open_session

    async with open_session(options.transport) as session:
        client = await connect(session, reference, options)
        return await body(client)


def make_connection(
    username: str | None,
    password_stdin: bool,
    insecure: list[str] | None,
    ca_cert: list[Path] | None,
    tls_verify: bool,
    platform: str | None = None,
) -> Connection:
    return Connection(
        username=username,
        password_stdin=password_stdin,
        insecure=tuple(insecure or ()),
        ca_cert=tuple(ca_cert or ()),
        tls_verify=tls_verify,
        platform=platform,
    )


def build(conn: Connection, **kwargs: bool | int) -> PullOptions:
    try:
        options = conn.options(**kwargs)  # type: ignore[arg-type]
    except PullVerifyError as exc:
        raise fail(exc) from exc
    if not conn.tls_verify:
        err("warning: TLS certificate verification is off (--no-tls-verify)")
    return options


# -- the verbs -----------------------------------------------------------------------------


def manifest_command(
    reference: Annotated[str, typer.Argument(help="Image reference.")],
    platform: PlatformOpt = None,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    insecure: InsecureOpt = None,
    ca_cert: CaCertOpt = None,
    tls_verify: TlsVerifyOpt = True,
) -> None:
    """Print a manifest's exact bytes (so `| sha256sum` gives its digest).

    With --platform an index is resolved to that platform's manifest.
    """
    ref = parse_ref(reference)
    conn = make_connection(username, password_stdin, insecure, ca_cert, tls_verify, platform)
    options = build(conn)

    async def body(client: RegistryClient) -> bytes:
        from puller.manifest import ImageIndex, parse_manifest

        data, _digest = await fetch_manifest(client, ref)
        if options.platform is None:
            return data
        top = parse_manifest(data)
        if not isinstance(top, ImageIndex):
            return data  # an image manifest is its own answer for any platform
        return await fetch_child(client, ref, choose(top, options.platform))

    data = run_verb(lambda: with_client(ref, options, body))
    write_stdout_bytes(data)


def config_command(
    reference: Annotated[str, typer.Argument(help="Image reference.")],
    platform: PlatformOpt = None,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    insecure: InsecureOpt = None,
    ca_cert: CaCertOpt = None,
    tls_verify: TlsVerifyOpt = True,
) -> None:
    """Print an image's config blob, verified against its descriptor (digest = image ID)."""
    ref = parse_ref(reference)
    conn = make_connection(username, password_stdin, insecure, ca_cert, tls_verify, platform)
    options = build(conn)

    async def body(client: RegistryClient) -> bytes:
        from puller.pull import fetch_config

        manifest = await resolve_image(client, ref, options.platform)
        return await fetch_config(client, ref.repository, manifest.config, [])

    data = run_verb(lambda: with_client(ref, options, body))
    write_stdout_bytes(data)


def parse_repository(text: str) -> Reference:
    """``registry/repo`` for ``tags``: a tag or digest in it is a mistake worth saying."""
    last = text.rsplit("/", 1)[-1]
    if "@" in text or ":" in last:
        raise fail(UsageError(f"tags takes a repository, not an image reference: {text!r}"))
    return parse_ref(text)


def tags_command(
    repository: Annotated[str, typer.Argument(help="Repository: [registry/]repo.")],
    json_output: Annotated[
        bool, typer.Option("--json", help='Print {"name": ..., "tags": [...]}.')
    ] = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    insecure: InsecureOpt = None,
    ca_cert: CaCertOpt = None,
    tls_verify: TlsVerifyOpt = True,
) -> None:
    """List every tag of a repository, following the registry's `Link` pages."""
    ref = parse_repository(repository)
    options = build(make_connection(username, password_stdin, insecure, ca_cert, tls_verify))

    async def body(client: RegistryClient) -> list[str]:
        return [tag async for tag in client.iter_tags(ref.repository)]

    tags = run_verb(lambda: with_client(ref, options, body))
    if json_output:
        name = f"{ref.registry}/{ref.repository}"
        typer.echo(json.dumps({"name": name, "tags": tags}, indent=2))
    else:
        for tag in tags:
            typer.echo(tag)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    from puller.cli import EXIT_CODE_HELP

    app.command(name="manifest", epilog=EXIT_CODE_HELP)(manifest_command)
    app.command(name="config", epilog=EXIT_CODE_HELP)(config_command)
    app.command(name="tags", epilog=EXIT_CODE_HELP)(tags_command)
