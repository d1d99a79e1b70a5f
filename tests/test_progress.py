"""Rich progress on a terminal (injected console, fixed clock) and plain lines off one."""

from __future__ import annotations

import io

import anyio
from rich.console import Console
from typer.testing import CliRunner

from puller.cli import verify_app
from puller.progress import RichProgress, open_progress
from puller.pull import NoProgress, PullOptions, pull_verify
from puller.reference import parse_reference
from puller.report import PullResult
from tests.kit.fixtures import PushedImage
from tests.kit.images import LayerSpec, build_image, make_tar, push_image, random_bytes
from tests.kit.registry import RunningRegistry


def pull_with_rich(ref: str) -> tuple[PullResult, str]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    progress = RichProgress(console, get_time=lambda: 100.0, auto_refresh=False)

    async def main() -> PullResult:
        return await pull_verify(parse_reference(ref), PullOptions(), progress=progress)

    try:
        result = anyio.run(main)
    finally:
        progress.close()
    return result, buffer.getvalue()


def final_frame(output: str) -> str:
    """The last rendering of the live display (each refresh redraws every line)."""
    return output[output.rindex("Total") :]


def test_a_line_per_layer_and_a_total(shared_standard_image: PushedImage) -> None:
    result, output = pull_with_rich(shared_standard_image.reference)
    assert result.ok
    frame = final_frame(output)
    for layer in shared_standard_image.image.layers:
        short = layer.digest.split(":")[1][:12]
        assert f"{short}: Verified" in frame
    assert "3/3 layers" in frame
    assert shared_standard_image.reference in output


def test_a_failed_layer_says_so(registry: RunningRegistry) -> None:
    image = build_image(
        [
            LayerSpec(make_tar({"ok": random_bytes(3000, 1)})),
            LayerSpec(make_tar({"bad": random_bytes(3000, 2)})),
        ],
        fmt="oci",
    )
    push_image(registry.url, "progress/bad", "t", image)
    registry.flip_byte(image.layers[1].digest)
    result, output = pull_with_rich(f"{registry.host}/progress/bad:t")
    assert not result.ok
    frame = final_frame(output)
    assert f"{image.layers[1].digest.split(':')[1][:12]}: FAILED digest-mismatch" in frame
    assert f"{image.layers[0].digest.split(':')[1][:12]}: Verified" in frame
    assert "2/2 layers, 1 failed" in frame


def test_not_a_terminal_gets_the_fallback_and_plain_lines(
    shared_standard_image: PushedImage,
) -> None:
    fallback = NoProgress()
    with open_progress(fallback, terminal=False) as chosen:
        assert chosen is fallback
    run = CliRunner().invoke(verify_app, [shared_standard_image.reference])
    assert run.exit_code == 0
    assert "\x1b[" not in run.stdout  # no cursor movement or colour in a pipe
    assert "Verified" in run.stdout
    quiet = CliRunner().invoke(verify_app, ["-q", shared_standard_image.reference])
    assert quiet.stdout.strip() == shared_standard_image.digest
