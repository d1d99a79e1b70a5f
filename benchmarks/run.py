"""``make bench``: pull-verify against skopeo, containerd, the seed's shell pipeline and the
in-process limit, on synthetic images in a real local registry.

Layer: benchmark driver (processes, files, loopback network). One run measures every tool
on every image, alternating tools within each repetition so that drift in the machine's
load spreads over all of them; results go to ``benchmarks/results/latest.{json,md,png}``.

    python -m benchmarks.run                          # the two standard images, 3 repetitions
    python -m benchmarks.run --shape tiny=2x4:gzip:0.75 --tools pull-verify,limit -n 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import report as rep
from benchmarks.images import BuiltImage, ImageShape, build_image, push_image
from benchmarks.tools import (
    Sample,
    Unavailable,
    cpu_model,
    ctr_pull,
    ctr_snapshotter,
    in_process_limit,
    manual_pipeline,
    pull_verify,
    pull_verify_has_output,
    run_measured,
    skopeo_copy,
    venv_bin,
)
from tests.kit.registry import RegistryConfig, free_port, start_registry

HERE = Path(__file__).resolve().parent
PRESETS = {
    # ~1 GiB uncompressed in 4 gzip layers: the image the targets are stated for.
    "1gib-4-layers": ImageShape("1gib-4-layers", layers=4, layer_mib=256),
    # 2 GiB in one layer: no concurrency between layers to hide behind.
    "2gib-1-layer": ImageShape("2gib-1-layer", layers=1, layer_mib=2048),
    "1gib-4-layers-zstd": ImageShape(
        "1gib-4-layers-zstd", layers=4, layer_mib=256, compression="zstd"
    ),
}
DEFAULT_SHAPES = ("1gib-4-layers", "2gib-1-layer")
ALL_TOOLS = ("pull-verify", "pull-verify-output", "skopeo", "manual", "ctr", "limit")
LABELS = {
    "pull-verify": "pull-verify",
    "pull-verify-output": "pull-verify --output",
    "skopeo": "skopeo copy (dir:)",
    "manual": "manual pipeline",
    "ctr": "ctr image pull",
    "limit": "in-process limit",
}


def parse_shape(text: str) -> ImageShape:
    """A preset name, or ``NAME=LAYERSxMIB[:gzip|zstd][:TEXT_FRACTION]``."""
    if text in PRESETS:
        return PRESETS[text]
    name, sep, spec = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"unknown shape {text!r}; presets: {', '.join(PRESETS)}")
    parts = spec.split(":")
    try:
        layers, mib = (int(x) for x in parts[0].lower().split("x"))
        compression = parts[1] if len(parts) > 1 else "gzip"
        fraction = float(parts[2]) if len(parts) > 2 else 0.75
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: {exc}") from exc
    if compression not in ("gzip", "zstd") or not 0 <= fraction <= 1 or layers < 1 or mib < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}")
    return ImageShape(name, layers, mib, fraction, compression)  # type: ignore[arg-type]


def help_seconds() -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([venv_bin("pull-verify"), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup() -> dict[str, float]:
    """pull-verify doing no work: interpreter, imports, argument parsing, one refused
    loopback connection. Every pull pays this before its first byte; the limit does not."""
    port = free_port()  # nothing listens there
    samples = [
        run_measured(
            [venv_bin("pull-verify"), "--retries", "0", "--quiet", f"127.0.0.1:{port}/none:x"]
        )
        for _ in range(5)
    ]
    return {
        "wall_s": statistics.median(s.wall for s in samples),
        "cpu_s": statistics.median(s.cpu for s in samples),
        "peak_rss_mib": statistics.median(s.rss_mib or 0.0 for s in samples),
    }


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def _runners(
    tools: list[str],
    ref: str,
    registry_url: str,
    repo: str,
    image: BuiltImage,
    work: Path,
    snapshotter: str | None,
) -> dict[str, Callable[[], Sample]]:
    table: dict[str, Callable[[], Sample]] = {
        "pull-verify": lambda: pull_verify(ref),
        "pull-verify-output": lambda: pull_verify(ref, work / "pv-output"),
        "skopeo": lambda: skopeo_copy(ref, work),
        "manual": lambda: manual_pipeline(registry_url, repo, image, work),
        "ctr": lambda: ctr_pull(ref, work, snapshotter or "native"),
        "limit": lambda: in_process_limit(image),
    }
    return {name: table[name] for name in tools}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--shape", action="append", type=parse_shape, dest="shapes")
    parser.add_argument("-n", "--repetitions", type=int, default=3)
    parser.add_argument("--tools", default=",".join(ALL_TOOLS))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    shapes: list[ImageShape] = args.shapes or [PRESETS[name] for name in DEFAULT_SHAPES]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(ALL_TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; known: {', '.join(ALL_TOOLS)}")

    unavailable: dict[str, str] = {}
    if "pull-verify-output" in tools and not pull_verify_has_output():
        unavailable["pull-verify-output"] = "this pull-verify has no --output option yet"

    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.cache))
    report: dict[str, Any] = {
        "machine": machine(),
        "repetitions": args.repetitions,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images": [],
    }
    try:
        # The registry's storage lives in the cache too: blobs pushed once stay pushed.
        with start_registry(RegistryConfig(root=args.cache / "registry")) as registry:
            pushed = []
            for shape in shapes:
                t0 = time.perf_counter()
                image = build_image(shape, args.cache)
                repo = f"bench/{shape.name}"
                push_image(registry.url, repo, "v1", image)
                print(
                    f"{shape.name}: {image.compressed_bytes / rep.MIB:.0f} MiB compressed, "
                    f"{image.uncompressed_bytes / rep.MIB:.0f} MiB uncompressed, ready in "
                    f"{time.perf_counter() - t0:.1f} s",
                    flush=True,
                )
                pushed.append((shape, image, repo, f"{registry.host}/{repo}:v1"))

            snapshotter = None
            if "ctr" in tools:
                try:
                    smallest = min(pushed, key=lambda p: p[1].compressed_bytes)
                    snapshotter = ctr_snapshotter(work, smallest[3])
                    report["ctr_snapshotter"] = snapshotter
                except Unavailable as exc:
                    unavailable["ctr"] = str(exc)

            active = [t for t in tools if t not in unavailable]
            samples: dict[str, dict[str, list[Sample]]] = {s.name: {} for s in shapes}
            for rep_index in range(args.repetitions):
                for shape, image, repo, ref in pushed:
                    runners = _runners(active, ref, registry.url, repo, image, work, snapshotter)
                    # Rotate the order each repetition so no tool always runs first.
                    names = list(runners)
                    shift = rep_index % max(1, len(names))
                    for name in names[shift:] + names[:shift]:
                        sample = runners[name]()
                        samples[shape.name].setdefault(name, []).append(sample)
                        status = "ok" if sample.ok else f"FAILED {sample.note[:300]}"
                        rss = "" if sample.rss_mib is None else f", {sample.rss_mib:.0f} MiB"
                        print(
                            f"[{rep_index + 1}/{args.repetitions}] {shape.name} {name}: "
                            f"{sample.wall:.2f} s wall, {sample.cpu:.2f} s CPU{rss} {status}",
                            flush=True,
                        )
            for shape, image, _repo, _ref in pushed:
                tools_out: dict[str, Any] = {}
                for name in tools:
                    if name in unavailable:
                        tools_out[name] = {"label": LABELS[name], "unavailable": unavailable[name]}
                        continue
                    summary = rep.summarize(
                        samples[shape.name][name], image.compressed_bytes, image.uncompressed_bytes
                    )
                    tools_out[name] = {"label": LABELS[name], **summary}
                report["images"].append(
                    {
                        "shape": {
                            "name": shape.name,
                            "layers": shape.layers,
                            "layer_mib": shape.layer_mib,
                            "text_fraction": shape.text_fraction,
                            "compression": shape.compression,
                        },
                        "compressed_mib": image.compressed_bytes / rep.MIB,
                        "uncompressed_mib": image.uncompressed_bytes / rep.MIB,
                        "tools": tools_out,
                        "ratios": rep.ratios(tools_out),
                    }
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["help_seconds"] = help_seconds()
    report["startup"] = startup()
    report["unavailable"] = unavailable
    rep.write_json(report, args.results / "latest.json")
    table = rep.markdown(report)
    (args.results / "latest.md").write_text(table)
    if not args.no_chart:
        rep.write_chart(report, args.results / "latest.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
