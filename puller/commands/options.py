"""Command-line options several verbs take, declared once so they read the same everywhere.

Layer: the edge (typer declarations only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

UsernameOpt = Annotated[str | None, typer.Option("--username", "-u")]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin.")
]
InsecureOpt = Annotated[
    list[str] | None,
    typer.Option("--insecure", help="Allow plain HTTP to this host (repeatable)."),
]
CaCertOpt = Annotated[
    list[Path] | None, typer.Option("--ca-cert", help="Extra CA certificate (repeatable).")
]
TlsVerifyOpt = Annotated[
    bool, typer.Option("--tls-verify/--no-tls-verify", help="Verify TLS certificates.")
]
PlatformOpt = Annotated[
    str | None,
    typer.Option(help="Platform to pick from an index: os/arch[/variant]. Default: this host's."),
]
RetriesOpt = Annotated[int, typer.Option(help="Retries of transient failures per request.")]
RetryMaxTimeOpt = Annotated[
    float, typer.Option(help="Give up retrying a request after this many seconds.")
]
ReadTimeoutOpt = Annotated[
    float, typer.Option(help="Seconds without a byte before a download counts as stalled.")
]
