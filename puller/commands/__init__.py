"""Verbs of ``puller`` beyond ``verify``. Each module has ``register(app)``; add it here."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer) -> None:
    # One line per verb module; modules import their heavy dependencies lazily.
    return None
