"""``puller images``: the store listed like ``docker images``, with an injected clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from puller.cli import app
from puller.commands.images import (
    ImageRow,
    docker_size,
    human_duration,
    list_images,
    parse_created,
    render_table,
)
from tests.kit.images import LayerSpec, build_image, make_tar, push_image, random_bytes
from tests.kit.registry import RunningRegistry

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (45 * 60, "45 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (47 * 3600, "47 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (100 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration_reads_like_docker(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (999, "999B"), (5_590_000, "5.59MB"), (77_800_000, "77.8MB"), (133e6, "133MB")],
)
def test_sizes_have_three_significant_digits(size: float, text: str) -> None:
    assert docker_size(int(size)) == text


def test_created_parses_go_nanoseconds_and_rejects_garbage() -> None:
    assert parse_created("2024-01-01T00:00:00.123456789Z") == datetime(
        2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_created("yesterday") is None
    assert parse_created(None) is None


def test_table_columns_and_digests() -> None:
    row = ImageRow(
        repository="127.0.0.1:5000/demo/app",
        tag="latest",
        image_id="sha256:" + "ab" * 32,
        digest="sha256:" + "cd" * 32,
        created=NOW - timedelta(days=3, hours=1),
        size=20_971_520,
        platform="linux/amd64",
        reference="127.0.0.1:5000/demo/app:latest",
    )
    header, line = render_table([row], now=NOW, digests=False)
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert line.split("   ") == [
        "127.0.0.1:5000/demo/app",
        "latest",
        "abababababab",
        "3 days ago",
        "21MB",
    ]
    header, line = render_table([row], now=NOW, digests=True)
    assert "DIGEST" in header
    assert "sha256:" + "cd" * 32 in line


def test_images_lists_what_was_pulled_into_the_store(
    shared_registry: RunningRegistry, tmp_path: Path
) -> None:
    old = build_image(
        [LayerSpec(make_tar({"a": random_bytes(30_000, 1)}))],
        fmt="oci",
        config_extra={"created": "2024-02-20T12:00:00Z"},
    )
    new = build_image(
        [LayerSpec(make_tar({"b": random_bytes(10_000, 2)})), LayerSpec(make_tar({"c": b"c"}))],
        fmt="docker",
        config_extra={"created": "2024-03-01T09:30:00.5Z"},
    )
    push_image(shared_registry.url, "images/old", "1.0", old)
    push_image(shared_registry.url, "images/new", "2.0", new)
    store = tmp_path / "store"
    runner = CliRunner()
    for repo in ("images/old:1.0", "images/new:2.0"):
        res = runner.invoke(
            app, ["verify", f"{shared_registry.host}/{repo}", "--store", str(store)]
        )
        assert res.exit_code == 0, res.stdout + res.stderr

    lines: list[str] = []
    list_images(store, digests=True, json_output=False, now=NOW, out=lines.append)
    host = shared_registry.host
    assert lines[0].split()[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    assert [line.split("   ")[0].strip() for line in lines[1:]] == [
        f"{host}/images/new",  # newest first
        f"{host}/images/old",
    ]
    assert "2 hours ago" in lines[1]
    assert "10 days ago" in lines[2]
    assert new.image_id[7:19] in lines[1]
    assert new.manifest_digest in lines[1]

    res = runner.invoke(app, ["images", "--store", str(store), "--json"])
    assert res.exit_code == 0, res.stderr
    docs = {d["repository"]: d for d in json.loads(res.stdout)}
    got = docs[f"{host}/images/new"]
    assert got["tag"] == "2.0"
    assert got["image_id"] == new.image_id
    assert got["digest"] == new.manifest_digest  # the registry's digest, not the OCI copy's
    assert got["size"] == sum(layer.uncompressed_size for layer in new.layers)
    assert got["created"] == "2024-03-01T09:30:00.500000Z"
    assert docs[f"{host}/images/old"]["size"] == old.layers[0].uncompressed_size

    res = runner.invoke(app, ["images", "--store", str(store)])
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0].split() == [
        "REPOSITORY",
        "TAG",
        "IMAGE",
        "ID",
        "CREATED",
        "SIZE",
    ]
    assert len(res.stdout.splitlines()) == 3


def test_empty_and_foreign_stores(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["images", "--store", str(tmp_path / "nothing-yet")])
    assert res.exit_code == 0
    assert res.stdout.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    (tmp_path / "notes.txt").write_text("not a layout")
    res = runner.invoke(app, ["images", "--store", str(tmp_path)])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"puller images: {tmp_path} is not an OCI image layout"


def test_keep_uses_the_xdg_store_that_images_lists_by_default(
    shared_registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = build_image([LayerSpec(make_tar({"k": random_bytes(2000, 3)}))], fmt="oci")
    push_image(shared_registry.url, "images/kept", "v1", image)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    runner = CliRunner()
    plain = runner.invoke(app, ["verify", f"{shared_registry.host}/images/kept:v1"])
    assert plain.exit_code == 0, plain.stderr
    assert not (tmp_path / "xdg").exists()  # plain verification writes nothing
    kept = runner.invoke(app, ["verify", "--keep", f"{shared_registry.host}/images/kept:v1"])
    assert kept.exit_code == 0, kept.stderr
    assert (tmp_path / "xdg/pull-verify/index.json").is_file()
    res = runner.invoke(app, ["images", "--json"])
    assert res.exit_code == 0, res.stderr
    [doc] = json.loads(res.stdout)
    assert doc["reference"] == f"{shared_registry.host}/images/kept:v1"
    assert doc["image_id"] == image.image_id
