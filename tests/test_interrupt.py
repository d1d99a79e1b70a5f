"""Ctrl-C: the installed ``pull-verify`` in a subprocess, interrupted mid-pull with SIGINT.

Whatever it was doing (waiting on a stalled manifest, streaming a layer, sleeping before a
retry), it must cancel every task, exit 130 with one line on stderr, and print no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kit.faultproxy import Fault, FaultProxy, Rule
from tests.kit.images import BuiltImage, LayerSpec, build_image, make_tar, push_image, random_bytes
from tests.kit.registry import RunningRegistry

REPO = "interrupt/img"
_WAIT = 20.0  # generous: a loaded machine may be slow to start the interpreter


@pytest.fixture(scope="module")
def image(shared_registry: RunningRegistry) -> BuiltImage:
    # The last layer is over one read chunk (1 MiB), so part of it reaches a sink's
    # temporary file before it stalls.
    sizes = (200_000, 200_000, 1_500_000)
    built = build_image(
        [LayerSpec(make_tar({f"f{i}": random_bytes(n, 70 + i)})) for i, n in enumerate(sizes)],
        fmt="oci",
    )
    push_image(shared_registry.url, REPO, "t", built)
    return built


def wait_for_request(proxy: FaultProxy, path_contains: str) -> None:
    """Poll the proxy's log until the client has asked for ``path_contains``."""
    deadline = time.monotonic() + _WAIT
    while not proxy.requests_for(path_contains):
        if time.monotonic() > deadline:
            raise AssertionError(f"pull-verify never asked for {path_contains}: {proxy.log}")
        time.sleep(0.05)


def interrupt(
    proxy: FaultProxy,
    path_contains: str,
    *args: str,
    ready: Callable[[], bool] = lambda: True,
) -> subprocess.CompletedProcess[str]:
    """Run pull-verify, and SIGINT it once it asked for ``path_contains`` and ``ready()``."""
    command = [str(Path(sys.executable).parent / "pull-verify"), *args]
    env = {**os.environ, "NO_COLOR": "1"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            wait_for_request(proxy, path_contains)
            time.sleep(0.2)  # let the request settle into its wait
            deadline = time.monotonic() + _WAIT
            while not ready():
                assert time.monotonic() < deadline, "pull-verify never got ready to interrupt"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=_WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
        return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def assert_interrupted(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 130, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.splitlines() == ["pull-verify: interrupted"], done.stderr


def test_interrupt_while_a_layer_stalls(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[1].digest
    proxy.add(Rule(Fault.STALL, victim, after_bytes=50_000, stall=60.0))
    done = interrupt(proxy, victim, "--read-timeout", "60", f"{proxy.host}/{REPO}:t")
    assert_interrupted(done)
    assert "Status:" not in done.stdout  # no verdict on an unfinished pull


def test_interrupt_while_the_manifest_stalls(proxy: FaultProxy, image: BuiltImage) -> None:
    proxy.add(Rule(Fault.STALL, "/manifests/", after_bytes=10, stall=60.0))
    done = interrupt(
        proxy, "/manifests/", "--json", "--read-timeout", "60", f"{proxy.host}/{REPO}:t"
    )
    assert_interrupted(done)
    assert done.stdout == ""  # no half JSON document


def test_interrupt_while_waiting_to_retry(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(Fault.RATE_LIMIT, victim, retry_after="50", times=None))
    done = interrupt(proxy, victim, f"{proxy.host}/{REPO}:t")
    assert_interrupted(done)
    assert "retrying in 50.0s" in done.stdout
    assert len(proxy.requests_for(victim)) == 1


def test_interrupt_leaves_no_temporary_files_in_output(
    proxy: FaultProxy, image: BuiltImage, tmp_path: Path
) -> None:
    out = tmp_path / "layout"
    stalled = image.layers[2].digest
    proxy.add(Rule(Fault.STALL, stalled, after_bytes=1_200_000, stall=60.0))

    def temporaries() -> list[Path]:
        return [p for p in out.rglob(".tmp*") if p.is_file()] if out.exists() else []

    done = interrupt(
        proxy,
        stalled,
        "--read-timeout",
        "60",
        "--output",
        str(out),
        f"{proxy.host}/{REPO}:t",
        ready=lambda: bool(temporaries()),  # interrupted while a temporary file is open
    )
    assert_interrupted(done)
    assert temporaries() == []
    # Nothing names an image that did not finish, and the stalled layer is not stored.
    index = out / "index.json"
    if index.exists():
        assert json.loads(index.read_bytes()).get("manifests", []) == []
    assert not (out / "blobs" / "sha256" / stalled.split(":")[1]).exists()
