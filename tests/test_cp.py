"""``puller cp``: merged filesystem, whiteouts, links, hostile tars, against the real registry."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Final

import pytest
from typer.testing import CliRunner

from puller.cli import app
from puller.extract import Extraction
from tests.kit.images import (
    BuiltImage,
    LayerSpec,
    TarEntry,
    build_image,
    make_raw_tar,
    opaque,
    push_image,
    whiteout,
)
from tests.kit.registry import RunningRegistry

F: Final = "file"
D: Final = "dir"
S: Final = "symlink"
H: Final = "hardlink"

LOWER = make_raw_tar(
    [
        TarEntry("etc", D),
        TarEntry("etc/app", D),
        TarEntry("etc/app/a.txt", F, b"a v1\n"),
        TarEntry("etc/app/old.txt", F, b"old\n"),
        TarEntry("etc/app/hard", H, target="etc/app/a.txt"),
        TarEntry("etc/app/sub", D),
        TarEntry("etc/app/sub/deep.txt", F, b"deep\n"),
        TarEntry("etc/gone", D),
        TarEntry("etc/gone/x", F, b"x"),
        TarEntry("usr/bin/tool", F, b"#!/bin/sh\n", mode=0o755),
    ]
)
MIDDLE = make_raw_tar(
    [
        whiteout("etc/app/old.txt"),
        TarEntry("etc/app/link", S, target="a.txt"),
        TarEntry("etc/app/abs", S, target="/etc/passwd"),
        opaque("etc/app/sub"),
        TarEntry("etc/app/sub/new.txt", F, b"new\n"),
        whiteout("etc/gone"),
    ]
)
UPPER = make_raw_tar(
    [
        TarEntry("etc/app/a.txt", F, b"a v2\n"),
        TarEntry("etc/app/h1", F, b"shared\n"),
        TarEntry("etc/app/h2", H, target="etc/app/h1"),
    ]
)


def layered_image() -> BuiltImage:
    return build_image(
        [
            LayerSpec(LOWER, compression="gzip"),
            LayerSpec(MIDDLE, compression="zstd"),
            LayerSpec(UPPER, compression="none"),
        ],
        fmt="oci",
    )


def cp(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["cp", "-q", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".puller-cp-"))


@pytest.fixture(scope="module")
def layered_ref(shared_registry: RunningRegistry) -> str:
    push_image(shared_registry.url, "cp/layered", "t", layered_image())
    return f"{shared_registry.host}/cp/layered:t"


def test_directory_is_the_merged_view_of_all_layers(layered_ref: str, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    code, stderr = cp(f"{layered_ref}:/etc/app", str(dest))
    assert code == 0, stderr
    assert sorted(os.listdir(dest)) == ["a.txt", "abs", "h1", "h2", "hard", "link", "sub"]
    assert (dest / "a.txt").read_bytes() == b"a v2\n"
    # The hardlink of the lower layer kept the content it had: a.txt was replaced above it.
    assert (dest / "hard").read_bytes() == b"a v1\n"
    assert os.readlink(dest / "link") == "a.txt"
    assert os.readlink(dest / "abs") == "/etc/passwd"  # recreated, never followed
    assert os.listdir(dest / "sub") == ["new.txt"]  # opaque: deep.txt is hidden
    assert (dest / "h1").stat().st_ino == (dest / "h2").stat().st_ino
    assert leftovers(tmp_path) == []


def test_file_into_existing_directory_keeps_its_name_and_mode(
    layered_ref: str, tmp_path: Path
) -> None:
    code, stderr = cp(f"{layered_ref}:/usr/bin/tool", str(tmp_path))
    assert code == 0, stderr
    tool = tmp_path / "tool"
    assert tool.read_bytes() == b"#!/bin/sh\n"
    assert tool.stat().st_mode & 0o777 == 0o755
    renamed = tmp_path / "renamed"
    assert cp(f"{layered_ref}:/etc/app/a.txt", str(renamed))[0] == 0
    assert renamed.read_bytes() == b"a v2\n"


def test_whited_out_path_is_not_found_and_nothing_is_written(
    layered_ref: str, tmp_path: Path
) -> None:
    code, stderr = cp(f"{layered_ref}:/etc/gone", str(tmp_path / "gone"))
    assert code == 3
    assert "/etc/gone: no such file or directory" in stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_usage_errors(layered_ref: str, tmp_path: Path) -> None:
    assert cp("no-path-here", str(tmp_path))[0] == 2
    code, stderr = cp(f"{layered_ref}:/etc/app", str(tmp_path / "missing") + "/")
    assert code == 2
    assert "does not exist" in stderr


def test_a_destination_that_cannot_be_written_is_one_line_exit_2(layered_ref: str) -> None:
    # /proc refuses new directories even to root: a real local write failure.
    code, stderr = cp(f"{layered_ref}:/etc/app", "/proc/pull-verify-test")
    assert code == 2, stderr
    assert "cannot write /proc" in stderr
    assert "Traceback" not in stderr


WHY = {
    "dotdot": "climbs out with '..'",
    "absolute": "has an absolute path",
    "symlink-escape": "goes through the symlink esc",
    "hardlink-dotdot": "climbs out with '..'",
}
HOSTILE = {
    "dotdot": [TarEntry("../evil", F, b"pwned")],
    "absolute": [TarEntry("/abs-evil", F, b"pwned")],
    "symlink-escape": [TarEntry("esc", S, target="OUTSIDE"), TarEntry("esc/pwned", F, b"x")],
    "hardlink-dotdot": [TarEntry("link", H, target="../../outside-file")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_writes_nothing_outside_dest(
    shared_registry: RunningRegistry, tmp_path: Path, case: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    entries = [
        TarEntry(e.name, e.kind, e.data, e.target.replace("OUTSIDE", str(outside)), e.mode)
        for e in HOSTILE[case]
    ]
    image = build_image([LayerSpec(make_raw_tar(entries))], fmt="oci")
    push_image(shared_registry.url, f"cp/hostile-{case}", "t", image)
    code, stderr = cp(f"{shared_registry.host}/cp/hostile-{case}:t:/", str(work / "root"))
    assert code == 1, stderr
    assert WHY[case] in stderr
    assert "Traceback" not in stderr
    assert list(outside.iterdir()) == []
    assert list(work.iterdir()) == []  # neither DEST nor a staging directory is left
    assert not (tmp_path / "evil").exists()
    assert not Path("/abs-evil").exists()


def test_failed_verification_leaves_nothing(registry: RunningRegistry, tmp_path: Path) -> None:
    image = layered_image()
    push_image(registry.url, "cp/corrupt", "t", image)
    registry.flip_byte(image.layers[2].digest)  # the last layer: the others were applied
    work = tmp_path / "work"
    work.mkdir()
    code, stderr = cp(f"{registry.host}/cp/corrupt:t:/etc/app", str(work / "out"))
    assert code == 1
    assert image.layers[2].digest in stderr
    assert list(work.iterdir()) == []


def test_any_chunking_extracts_the_same(tmp_path: Path) -> None:
    """The push parser sees whatever chunks the network gives; the tree must not depend on it."""

    def extract(chunking: int | None, root: Path) -> dict[str, bytes | str]:
        root.mkdir()
        extraction = Extraction(root, "etc/app")
        rng = random.Random(chunking)
        for i, tar in enumerate((LOWER, MIDDLE, UPPER)):
            extraction.begin_layer(f"layer {i}")
            pos = 0
            while pos < len(tar):
                step = chunking or rng.randrange(1, 2000)
                extraction.feed(tar[pos : pos + step])
                pos += step
            extraction.end_layer()
        found = extraction.finalize()
        tree: dict[str, bytes | str] = {}
        for path in sorted(found.rglob("*")):
            rel = str(path.relative_to(found))
            if path.is_symlink():
                tree[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                tree[rel] = path.read_bytes()
        return tree

    whole = extract(1 << 30, tmp_path / "whole")
    assert extract(1, tmp_path / "bytes") == whole
    assert extract(None, tmp_path / "random") == whole
    assert whole["sub/new.txt"] == b"new\n"


def test_truncated_tar_is_refused(tmp_path: Path) -> None:
    extraction = Extraction(tmp_path, "")
    extraction.begin_layer("layer 0")
    extraction.feed(LOWER[:700])
    with pytest.raises(Exception, match="ends inside an entry"):
        extraction.end_layer()
