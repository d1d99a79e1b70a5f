"""``puller manifest | config | tags | inspect`` against the real registry."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from typer.testing import CliRunner

from puller.cli import app
from tests.kit.fixtures import PushedImage
from tests.kit.images import (
    LayerSpec,
    build_image,
    build_index,
    make_tar,
    push_image,
    push_index,
    random_bytes,
)
from tests.kit.registry import RunningRegistry


def run(*args: str) -> tuple[int, bytes, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout_bytes, result.stderr


def test_manifest_prints_the_exact_bytes(shared_standard_image: PushedImage) -> None:
    code, out, _ = run("manifest", shared_standard_image.reference)
    assert code == 0
    assert out == shared_standard_image.image.manifest
    assert "sha256:" + hashlib.sha256(out).hexdigest() == shared_standard_image.digest


def test_manifest_with_platform_resolves_an_index(shared_registry: RunningRegistry) -> None:
    amd = build_image([LayerSpec(make_tar({"a": random_bytes(100, 1)}))], fmt="oci")
    arm = build_image([LayerSpec(make_tar({"b": random_bytes(100, 2)}))], fmt="oci", arch="arm64")
    index = build_index([amd, arm], "oci")
    push_index(shared_registry.url, "verbs/multi", "t", index)
    ref = f"{shared_registry.host}/verbs/multi:t"
    assert run("manifest", ref)[1] == index.manifest
    assert run("manifest", "--platform", "linux/arm64", ref)[1] == arm.manifest
    assert run("config", "--platform", "linux/arm64", ref)[1] == arm.config.data

    code, out, _ = run("inspect", "--json", "--platform", "linux/arm64", ref)
    assert code == 0
    doc = json.loads(out)
    assert doc["digest"] == index.digest
    assert sorted(doc["platforms"]) == ["linux/amd64", "linux/arm64"]
    [image] = doc["images"]
    assert image["image_id"] == arm.image_id
    assert image["digest"] == arm.manifest_digest


def test_manifest_pinned_to_another_digest_is_an_integrity_error(
    shared_standard_image: PushedImage,
) -> None:
    wrong = "sha256:" + "0" * 64
    code, out, err = run("manifest", f"{shared_standard_image.reference}@{wrong}")
    assert code == 1
    assert out == b""
    assert wrong in err
    assert "Traceback" not in err


def test_config_prints_the_verified_config(shared_standard_image: PushedImage) -> None:
    code, out, _ = run("config", shared_standard_image.reference)
    assert code == 0
    assert out == shared_standard_image.image.config.data


def test_tags_lists_every_tag(shared_registry: RunningRegistry) -> None:
    image = build_image([LayerSpec(make_tar({"t": b"t"}))], fmt="oci")
    tags = [f"v{i}" for i in range(25)]
    for tag in tags:
        push_image(shared_registry.url, "verbs/tags", tag, image)
    repo = f"{shared_registry.host}/verbs/tags"
    code, out, _ = run("tags", repo)
    assert code == 0
    assert sorted(out.decode().split()) == sorted(tags)
    doc = json.loads(run("tags", "--json", repo)[1])
    assert doc == {"name": repo, "tags": doc["tags"]}
    assert sorted(doc["tags"]) == sorted(tags)
    assert run("tags", f"{repo}:v1")[0] == 2
    assert run("tags", f"{shared_registry.host}/verbs/nonesuch")[0] == 3


def test_inspect_reports_verified_sizes_and_diff_ids(shared_standard_image: PushedImage) -> None:
    image = shared_standard_image.image
    code, out, _ = run("inspect", "--json", shared_standard_image.reference)
    assert code == 0
    doc: dict[str, Any] = json.loads(out)
    assert doc["digest"] == image.manifest_digest
    assert doc["media_type"] == image.manifest_media_type
    assert doc["verified"] is True
    [img] = doc["images"]
    assert img["image_id"] == image.image_id
    assert img["created"] == "2024-01-01T00:00:00Z"
    assert img["platform"] == "linux/amd64"
    assert [
        (x["media_type"], x["digest"], x["diff_id"], x["compressed_size"], x["uncompressed_size"])
        for x in img["layers"]
    ] == [
        (x.blob.media_type, x.digest, x.diff_id, x.blob.size, x.uncompressed_size)
        for x in image.layers
    ]
    text = run("inspect", shared_standard_image.reference)[1].decode()
    assert f"Image ID:    {image.image_id}" in text
    for layer in image.layers:
        assert layer.diff_id in text
        assert f"uncompressed: {layer.uncompressed_size} bytes" in text


def test_inspect_of_a_corrupt_layer_fails_with_its_digest(registry: RunningRegistry) -> None:
    image = build_image([LayerSpec(make_tar({"x": random_bytes(5000, 3)}))], fmt="oci")
    push_image(registry.url, "verbs/corrupt", "t", image)
    registry.flip_byte(image.layers[0].digest)
    code, out, err = run("inspect", "--json", f"{registry.host}/verbs/corrupt:t")
    assert code == 1
    doc = json.loads(out)
    assert doc["verified"] is False
    assert doc["error"]["kind"] == "digest-mismatch"
    assert image.layers[0].digest in err


def test_inspect_local_reads_the_store(shared_standard_image: PushedImage, tmp_path: Any) -> None:
    image = shared_standard_image.image
    store = tmp_path / "store"
    pulled = CliRunner().invoke(
        app, ["verify", "--store", str(store), shared_standard_image.reference]
    )
    assert pulled.exit_code == 0, pulled.stdout + pulled.stderr
    code, out, err = run(
        "inspect", "--local", "--json", "--store", str(store), shared_standard_image.reference
    )
    assert code == 0, err
    [img] = json.loads(out)["images"]
    assert img["image_id"] == image.image_id
    assert [(x["digest"], x["diff_id"], x["uncompressed_size"]) for x in img["layers"]] == [
        (x.digest, x.diff_id, x.uncompressed_size) for x in image.layers
    ]
    missing = run("inspect", "--local", "--store", str(store), "127.0.0.1:1/no/such:t")
    assert missing[0] == 3
