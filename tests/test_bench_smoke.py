"""The benchmark harness end to end on a tiny image: it runs, and its report is complete.

A benchmark is not a test: nothing here asserts a time, only that every figure is there.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

from benchmarks.run import main


def test_harness_reports_every_figure_for_a_tiny_image(tmp_path: Path) -> None:
    results = tmp_path / "results"
    code = main(
        [
            "--shape",
            "tiny=2x2:gzip:0.5",
            "-n",
            "1",
            "--tools",
            "pull-verify,manual,limit",
            "--results",
            str(results),
            "--cache",
            str(tmp_path / "cache"),
            "--no-chart",
        ]
    )
    assert code == 0
    report = json.loads((results / "latest.json").read_text())
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["cpu"]
    (image,) = report["images"]
    assert image["shape"]["layers"] == 2
    assert image["uncompressed_mib"] > image["compressed_mib"] > 0
    tools = image["tools"]
    assert set(tools) == {"pull-verify", "manual", "limit"}
    for name, tool in tools.items():
        assert tool["ok"], (name, tool["notes"])
        assert tool["runs"] == 1
        for figure in ("wall_s", "cpu_s"):
            assert tool[figure]["min"] <= tool[figure]["median"] <= tool[figure]["max"]
        assert tool["mib_s_uncompressed"] > tool["mib_s_compressed"] > 0
    assert tools["pull-verify"]["peak_rss_mib"] > 0
    assert tools["limit"]["peak_rss_mib"] is None  # in-process: no RSS of its own
    ratios = image["ratios"]
    for key in ("wall_vs_manual", "wall_vs_limit", "cpu_vs_limit"):
        assert isinstance(ratios[key], numbers.Real), key
        assert ratios[key] > 0, key
    # Tools not asked for get no ratio rather than a made-up one.
    assert ratios["wall_vs_skopeo"] is None
    assert isinstance(report["help_seconds"], float)
    startup = report["startup"]
    for figure in ("wall_s", "cpu_s", "peak_rss_mib"):
        assert startup[figure] > 0, figure
    table = (results / "latest.md").read_text()
    assert "| pull-verify |" in table
    assert "in-process limit" in table
    assert "Without pull-verify's start-up: wall ÷ limit" in table
    assert "| `pull-verify --help`, s |" in table  # the one target a tiny image can show
