"""Summaries of the samples: medians and spread, ratios, JSON, a Markdown table, a chart.

Layer: pure except ``write_*`` (files). matplotlib is imported only by ``write_chart``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.tools import Sample

MIB = 1 << 20
PULL_VERIFY = "pull-verify"
RATIO_AGAINST = {
    "skopeo": "skopeo copy (dir:)",
    "ctr": "ctr image pull",
    "manual": "manual pipeline",
    "limit": "in-process limit",
}


def summarize(samples: Sequence[Sample], compressed: int, uncompressed: int) -> dict[str, Any]:
    walls = [s.wall for s in samples]
    cpus = [s.cpu for s in samples]
    rss = [s.rss_mib for s in samples if s.rss_mib is not None]
    wall = statistics.median(walls)
    return {
        "runs": len(samples),
        "ok": all(s.ok for s in samples),
        "notes": sorted({s.note for s in samples if s.note}),
        "wall_s": {"median": wall, "min": min(walls), "max": max(walls)},
        "cpu_s": {"median": statistics.median(cpus), "min": min(cpus), "max": max(cpus)},
        "peak_rss_mib": max(rss) if rss else None,
        "mib_s_compressed": compressed / MIB / wall if wall else None,
        "mib_s_uncompressed": uncompressed / MIB / wall if wall else None,
    }


def ratios(tools: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """pull-verify's median wall time over each peer's, and its CPU over the limit's."""
    ours = tools.get(PULL_VERIFY)
    out: dict[str, float | None] = {}
    for key in RATIO_AGAINST:
        peer = tools.get(key)
        usable = ours is not None and peer is not None and "wall_s" in peer and "wall_s" in ours
        out[f"wall_vs_{key}"] = (
            ours["wall_s"]["median"] / peer["wall_s"]["median"] if usable else None  # type: ignore[index]
        )
    limit = tools.get("limit")
    out["cpu_vs_limit"] = (
        ours["cpu_s"]["median"] / limit["cpu_s"]["median"]
        if ours and limit and "cpu_s" in ours and "cpu_s" in limit
        else None
    )
    return out


# The targets: (image, what, limit). Ratios are pull-verify's median over the peer's.
TARGET_IMAGE = "1gib-4-layers"
RSS_IMAGES = ("1gib-4-layers", "2gib-1-layer")
RSS_TARGET_MIB = 64.0
HELP_TARGET_S = 0.3


def targets(report: Mapping[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(target, measured, bound, met) for each target whose figures this run has."""
    rows: list[tuple[str, float, float, bool]] = []
    images = {image["shape"]["name"]: image for image in report["images"]}

    def add(name: str, value: float | None, bound: float) -> None:
        if value is not None:
            rows.append((name, value, bound, value <= bound))

    main = images.get(TARGET_IMAGE)
    if main is not None:
        r = main["ratios"]
        add(f"{TARGET_IMAGE}: wall ÷ skopeo copy (dir:)", r.get("wall_vs_skopeo"), 0.7)
        add(f"{TARGET_IMAGE}: wall ÷ in-process limit", r.get("wall_vs_limit"), 1.1)
        add(f"{TARGET_IMAGE}: CPU ÷ in-process limit CPU", r.get("cpu_vs_limit"), 1.15)
    for name in RSS_IMAGES:
        ours = images.get(name, {}).get("tools", {}).get(PULL_VERIFY)
        if ours is not None and ours.get("peak_rss_mib") is not None:
            add(f"{name}: peak RSS, MiB", ours["peak_rss_mib"], RSS_TARGET_MIB)
    add("`pull-verify --help`, s", report.get("help_seconds"), HELP_TARGET_S)
    return rows


def without_startup(image: Mapping[str, Any], startup: Mapping[str, float]) -> dict[str, float]:
    """pull-verify's wall and CPU over the limit's once its fixed start-up is taken off:
    how close the pipeline itself comes to the floor."""
    ours, limit = image["tools"].get(PULL_VERIFY), image["tools"].get("limit")
    if not ours or not limit or "wall_s" not in ours or "wall_s" not in limit:
        return {}
    return {
        "wall": (ours["wall_s"]["median"] - startup["wall_s"]) / limit["wall_s"]["median"],
        "cpu": (ours["cpu_s"]["median"] - startup["cpu_s"]) / limit["cpu_s"]["median"],
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(report: Mapping[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"Machine: {machine['cores']} cores, {machine['cpu']}, Python {machine['python']}; "
        f"{report['repetitions']} repetitions, tools alternating; median wall "
        "[min-max].",
        "",
    ]
    for image in report["images"]:
        shape = image["shape"]
        lines += [
            f"### {shape['name']}: {shape['layers']} x {shape['layer_mib']} MiB "
            f"{shape['compression']}, {image['compressed_mib']:.0f} MiB compressed / "
            f"{image['uncompressed_mib']:.0f} MiB uncompressed",
            "",
            "| tool | wall s | CPU s | MiB/s compressed | MiB/s uncompressed | peak RSS MiB |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for tool in image["tools"].values():
            if "unavailable" in tool:
                lines.append(f"| {tool['label']} | n/a: {tool['unavailable']} | | | | |")
                continue
            wall = tool["wall_s"]
            flag = "" if tool["ok"] else " (FAILED: " + "; ".join(tool["notes"])[:200] + ")"
            lines.append(
                f"| {tool['label']}{flag} | {wall['median']:.2f} [{wall['min']:.2f}-"
                f"{wall['max']:.2f}] | {tool['cpu_s']['median']:.2f} | "
                f"{_fmt(tool['mib_s_compressed'], '.0f')} | "
                f"{_fmt(tool['mib_s_uncompressed'], '.0f')} | "
                f"{_fmt(tool['peak_rss_mib'], '.0f')} |"
            )
        r = image["ratios"]
        lines += [
            "",
            "pull-verify wall time ÷ "
            + ", ".join(
                f"{label}: {_fmt(r.get(f'wall_vs_{key}'), '.2f')}"
                for key, label in RATIO_AGAINST.items()
            )
            + f"; CPU ÷ limit CPU: {_fmt(r.get('cpu_vs_limit'), '.2f')}",
            "",
        ]
        startup = report.get("startup")
        bare = without_startup(image, startup) if startup else {}
        if bare:
            lines += [
                f"Without pull-verify's start-up: wall ÷ limit {bare['wall']:.2f}, "
                f"CPU ÷ limit CPU {bare['cpu']:.2f}.",
                "",
            ]
    help_s = report.get("help_seconds")
    if help_s is not None:
        lines.append(f"`pull-verify --help`: {help_s:.3f} s (median of 5).")
    startup = report.get("startup")
    if startup:
        lines.append(
            f"`pull-verify` start-up (interpreter, imports, arguments, one refused loopback "
            f"connection; median of 5): {startup['wall_s']:.2f} s wall, "
            f"{startup['cpu_s']:.2f} s CPU, {startup['peak_rss_mib']:.0f} MiB."
        )
    rows = targets(report)
    if rows:
        lines += ["", "| target | measured | bound | met |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {name} | {value:.2f} | {bound:g} | {'yes' if met else 'no'} |"
            for name, value, bound, met in rows
        ]
    return "\n".join(lines) + "\n"


def write_json(report: Mapping[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def write_chart(report: Mapping[str, Any], path: Path) -> None:
    """Median wall time per tool and image, with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = report["images"]
    fig, axes = plt.subplots(1, len(images), figsize=(6 * len(images), 3.8), squeeze=False)
    for ax, image in zip(axes[0], images, strict=True):
        names, medians, low, high = [], [], [], []
        for tool in image["tools"].values():
            if "wall_s" not in tool:
                continue
            wall = tool["wall_s"]
            names.append(tool["label"])
            medians.append(wall["median"])
            low.append(wall["median"] - wall["min"])
            high.append(wall["max"] - wall["median"])
        colors = ["tab:green" if n.startswith(PULL_VERIFY) else "tab:gray" for n in names]
        ax.barh(names, medians, xerr=[low, high], color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel("wall time, s (lower is better)")
        shape = image["shape"]
        ax.set_title(
            f"{shape['name']}: {image['uncompressed_mib']:.0f} MiB in {shape['layers']} "
            f"{shape['compression']} layer(s)",
            fontsize=10,
        )
    machine = report["machine"]
    fig.suptitle(f"{machine['cores']} cores, {machine['cpu']}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
