"""Verbs of ``puller`` beyond ``verify``. Each module has ``register(app)``; add it here."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer) -> None:
    # One line per verb module; modules import their heavy dependencies lazily.
    __import__("puller.commands.registry_verbs", fromlist=["register"]).register(app)
    __import__("puller.commands.cp", fromlist=["register"]).register(app)
    __import__("puller.commands.inspect", fromlist=["register"]).register(app)
    __import__("puller.commands.audit", fromlist=["register"]).register(app)
    __import__("puller.commands.images", fromlist=["register"]).register(app)
    return None
