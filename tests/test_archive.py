"""``--format docker-archive -o FILE.tar``: a ``docker load`` tarball that skopeo reads."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from puller.cli import verify_app
from tests.kit.fixtures import PushedImage
from tests.kit.images import push_image, standard_image
from tests.kit.registry import RunningRegistry


def verify(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(verify_app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def skopeo(*args: str) -> str:
    proc = subprocess.run(["/usr/bin/skopeo", *args], capture_output=True, check=False, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_docker_archive_is_read_by_skopeo_and_holds_the_verified_blobs(
    shared_standard_image: PushedImage, tmp_path: Path
) -> None:
    image = shared_standard_image.image
    target = tmp_path / "image.tar"
    code, out, err = verify(
        shared_standard_image.reference, "--format", "docker-archive", "-o", str(target)
    )
    assert code == 0, out + err
    assert f"Saved: docker-archive:{target}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar"]  # no scratch left

    with tarfile.open(target) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        [entry] = json.load(member)
        assert entry["RepoTags"] == [shared_standard_image.reference]
        config = tar.extractfile(entry["Config"])
        assert config is not None
        assert config.read() == image.config.data
        for path, layer in zip(entry["Layers"], image.layers, strict=True):
            data = tar.extractfile(path)
            assert data is not None
            assert data.read() == layer.blob.data

    doc: dict[str, Any] = json.loads(skopeo("inspect", f"docker-archive:{target}"))
    assert doc["Created"] == "2024-01-01T00:00:00Z"
    # skopeo names docker-archive layers by diff_id (it inflates them to check).
    assert doc["Layers"] == image.diff_ids
    # Selecting the image by its RepoTags entry shows skopeo read manifest.json's tags.
    by_tag = json.loads(
        skopeo("inspect", f"docker-archive:{target}:{shared_standard_image.reference}")
    )
    assert by_tag["Digest"] == doc["Digest"]
    # A full copy reads and checks every layer against the config's diff_ids.
    skopeo("copy", "--quiet", f"docker-archive:{target}", f"dir:{tmp_path / 'copy'}")


def test_failed_verification_writes_no_archive(registry: RunningRegistry, tmp_path: Path) -> None:
    image = standard_image(4)
    push_image(registry.url, "arch/bad", "v1", image)
    registry.flip_byte(image.layers[2].digest)
    outdir = tmp_path / "out"
    outdir.mkdir()
    target = outdir / "image.tar"
    code, out, err = verify(
        f"{registry.host}/arch/bad:v1",
        "--retries",
        "0",
        "--format",
        "docker-archive",
        "-o",
        str(target),
    )
    assert code == 1, out + err
    assert image.layers[2].digest in err
    assert list(outdir.iterdir()) == []  # no FILE, no temporary tarball, no scratch layout


def test_archive_built_from_the_store_reuses_its_layers(
    shared_registry: RunningRegistry, tmp_path: Path
) -> None:
    image = standard_image(9, fmt="oci")
    push_image(shared_registry.url, "arch/stored", "v1", image)
    ref = f"{shared_registry.host}/arch/stored:v1"
    store = tmp_path / "store"
    code, out, err = verify(ref, "--store", str(store))
    assert code == 0, out + err
    target = tmp_path / "again.tar"
    code, out, err = verify(
        ref, "--store", str(store), "--format", "docker-archive", "-o", str(target)
    )
    assert code == 0, out + err
    assert out.count("Already verified in store") == len(image.layers)
    doc = json.loads(skopeo("inspect", f"docker-archive:{target}"))
    assert doc["Layers"] == image.diff_ids


def test_rotted_stored_layer_never_reaches_an_archive(
    shared_registry: RunningRegistry, tmp_path: Path
) -> None:
    image = standard_image(10, fmt="oci")
    push_image(shared_registry.url, "arch/rot", "v1", image)
    ref = f"{shared_registry.host}/arch/rot:v1"
    store = tmp_path / "store"
    code, out, err = verify(ref, "--store", str(store))
    assert code == 0, out + err
    victim = image.layers[0].digest
    stored = store / "blobs" / "sha256" / victim.split(":")[1]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only hashing can tell
    stored.write_bytes(bytes(data))
    target = tmp_path / "rot.tar"
    code, out, err = verify(
        ref, "--store", str(store), "--format", "docker-archive", "-o", str(target)
    )
    assert code == 1, out + err
    assert victim in err
    assert not target.exists()
    assert not list(tmp_path.glob(".rot.tar.tmp-*"))


def test_docker_archive_refuses_all_platforms_and_a_directory(
    shared_standard_image: PushedImage, tmp_path: Path
) -> None:
    for args, text in (
        (["--all-platforms", "-o", str(tmp_path / "a.tar")], "one platform"),
        (["-o", str(tmp_path)], "is a directory"),
    ):
        code, out, err = verify(
            shared_standard_image.reference, "--format", "docker-archive", *args
        )
        assert code == 2, out + err
        assert text in err
        assert "Traceback" not in err
