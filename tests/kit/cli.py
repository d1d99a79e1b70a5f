"""Running the real typer apps in-process, the way the tests of every verb need it.

Layer: test kit. A crash that is not a clean exit is re-raised, so a bug shows as a
traceback in the test, never as a misleading exit code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import typer
from typer.testing import CliRunner


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.stdout)
        return doc

    def layer(self, index: int, image: int = 0) -> dict[str, Any]:
        layer: dict[str, Any] = self.json()["images"][image]["layers"][index]
        return layer

    def error(self) -> dict[str, Any]:
        """The first error in a ``--json`` report: the pull's, an image's, or a layer's."""
        doc = self.json()
        if doc["error"] is not None:
            found: dict[str, Any] = doc["error"]
            return found
        for image in doc["images"]:
            if image["error"] is not None:
                found = image["error"]
                return found
            for layer in image["layers"]:
                if layer["error"] is not None:
                    found = layer["error"]
                    return found
        raise AssertionError(f"no error in {doc}")


def invoke(app: typer.Typer, args: list[str], stdin: str | None = None) -> Run:
    result = CliRunner().invoke(app, args, input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def verify(*args: str, stdin: str | None = None) -> Run:
    """``pull-verify ARGS``."""
    from puller.cli import verify_app

    return invoke(verify_app, list(args), stdin)


def one_line_error(run: Run) -> str:
    """The single ``pull-verify: ...`` line on stderr; no traceback anywhere."""
    assert "Traceback" not in run.stderr + run.stdout
    lines = [line for line in run.stderr.splitlines() if line.startswith("pull-verify:")]
    assert len(lines) == 1, run.stderr
    return lines[0]
