"""End to end against the real distribution registry: verdicts, exit codes, messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from typer.testing import CliRunner

from puller.cli import app
from tests.kit.cli import one_line_error, verify
from tests.kit.fixtures import PushedImage
from tests.kit.images import (
    BuiltImage,
    LayerSpec,
    build_image,
    build_index,
    demo_image,
    make_tar,
    push_image,
    push_index,
    random_bytes,
    standard_image,
    text_like_bytes,
)
from tests.kit.producers import umoci_image
from tests.kit.registry import BasicAuthRegistry, RunningRegistry, free_port


def push(registry: RunningRegistry, repo: str, tag: str, image: BuiltImage) -> str:
    push_image(registry.url, repo, tag, image)
    return f"{registry.host}/{repo}:{tag}"


# -- images that are what they claim ------------------------------------------------------


def test_standard_image_verifies_with_docker_pull_like_output(
    shared_standard_image: PushedImage,
) -> None:
    image = shared_standard_image.image
    run = verify(shared_standard_image.reference)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"Digest: {image.manifest_digest}" in run.stdout
    assert f"Image ID: {image.image_id}" in run.stdout
    for layer in image.layers:
        assert f"{layer.digest.split(':')[1][:12]}: Verified" in run.stdout
    assert "Status: Verified" in run.stdout
    assert run.stderr == ""


@pytest.mark.parametrize("compression", ["gzip", "gzip-multi", "zstd", "none"])
@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_every_compression_and_format(
    shared_registry: RunningRegistry, compression: str, fmt: str
) -> None:
    if fmt == "docker" and compression in ("zstd", "none"):
        fmt = "oci"  # Docker schema2 has no media type for these
    tar = make_tar({"a.txt": text_like_bytes(300_000, 5), "b.bin": random_bytes(70_000, 6)})
    image = build_image(
        [LayerSpec(tar, compression=compression, parts=3 if "multi" in compression else 1)],  # type: ignore[arg-type]
        fmt=fmt,  # type: ignore[arg-type]
    )
    ref = push(shared_registry, f"formats/{fmt}-{compression}", "t", image)
    run = verify("--json", ref)
    assert run.exit_code == 0, run.stdout
    doc = run.json()
    assert doc["verified"] is True
    [img] = doc["images"]
    assert img["image_id"] == image.image_id
    assert [layer["diff_id"] for layer in img["layers"]] == image.diff_ids
    assert [layer["digest"] for layer in img["layers"]] == [x.digest for x in image.layers]
    assert all(check["ok"] for check in img["checks"])
    names = {check["name"] for check in img["checks"]}
    assert {"config-digest", "diff-id-count", "layer-digest", "diff-id"} <= names


def test_pinned_digest_and_tag_plus_digest(shared_standard_image: PushedImage) -> None:
    pinned = verify(shared_standard_image.digest_reference)
    assert pinned.exit_code == 0, pinned.stdout
    both = verify(f"{shared_standard_image.reference}@{shared_standard_image.digest}")
    assert both.exit_code == 0, both.stdout
    checks = [
        c["name"] for c in verify("--json", shared_standard_image.digest_reference).json()["checks"]
    ]
    assert "manifest-digest" in checks


def test_manifest_with_trailing_newline_is_hashed_as_served(
    shared_registry: RunningRegistry,
) -> None:
    image = build_image(
        [LayerSpec(make_tar({"x": b"y" * 1000}))], fmt="oci", manifest_trailing_newline=True
    )
    assert image.manifest.endswith(b"\n")
    ref = push(shared_registry, "newline/img", "t", image)
    run = verify(ref)
    assert run.exit_code == 0, run.stdout
    assert f"Digest: {image.manifest_digest}" in run.stdout


def test_quiet_prints_only_the_digest(shared_standard_image: PushedImage) -> None:
    run = verify("-q", shared_standard_image.reference)
    assert run.exit_code == 0
    assert run.stdout.strip() == shared_standard_image.digest


def test_index_platform_choice_and_all_platforms(shared_registry: RunningRegistry) -> None:
    amd = build_image([LayerSpec(make_tar({"amd": random_bytes(5000, 1)}))], fmt="oci")
    arm = build_image(
        [LayerSpec(make_tar({"arm": random_bytes(5000, 2)}))],
        fmt="oci",
        arch="arm64",
        variant="v8",
    )
    index = build_index([amd, arm], "oci", extra_attestation=True)
    push_index(shared_registry.url, "multi/arch", "t", index)
    ref = f"{shared_registry.host}/multi/arch:t"

    arm_run = verify("--platform", "linux/arm64", ref)
    assert arm_run.exit_code == 0, arm_run.stdout
    assert f"Image ID: {arm.image_id}" in arm_run.stdout
    assert f"Digest: {index.digest}" in arm_run.stdout

    every = verify("--all-platforms", "--json", ref)
    assert every.exit_code == 0, every.stdout
    doc = every.json()
    assert sorted(i["platform"] for i in doc["images"]) == ["linux/amd64", "linux/arm64/v8"]
    assert {i["image_id"] for i in doc["images"]} == {amd.image_id, arm.image_id}

    missing = verify("--platform", "linux/s390x", ref)
    assert missing.exit_code == 3
    assert "linux/s390x" in one_line_error(missing)


def test_independent_producers_umoci_and_skopeo(
    shared_registry: RunningRegistry, tmp_path: Path
) -> None:
    files = {"etc/motd": b"made by umoci\n", "data/blob.bin": random_bytes(200_000, 9)}
    formats: tuple[Literal["oci", "v2s2"], ...] = ("oci", "v2s2")
    for fmt in formats:
        work = tmp_path / fmt
        work.mkdir()
        digest = umoci_image(
            work,
            shared_registry.host,
            "umoci/app",
            fmt,
            files=files,
            more_layers=[{"more.txt": text_like_bytes(50_000, 3)}],
            fmt=fmt,
        )
        run = verify("--json", f"{shared_registry.host}/umoci/app:{fmt}")
        assert run.exit_code == 0, run.stdout
        doc = run.json()
        assert doc["digest"] == digest
        assert len(doc["images"][0]["layers"]) == 2


# -- images that are not what they claim ---------------------------------------------------


def test_flipped_byte_in_stored_layer_is_a_digest_mismatch(registry: RunningRegistry) -> None:
    image = standard_image(11)
    ref = push(registry, "corrupt/layer", "t", image)
    victim = image.layers[1].digest
    registry.flip_byte(victim)
    run = verify("--json", ref)
    assert run.exit_code == 1
    layer = run.json()["images"][0]["layers"][1]
    assert layer["error"]["kind"] == "digest-mismatch"
    assert layer["error"]["expected"] == victim
    assert layer["error"]["actual"].startswith("sha256:")
    assert layer["error"]["actual"] != victim
    # The other layers are still judged, and verified.
    assert [x["verified"] for x in run.json()["images"][0]["layers"]] == [True, False, True]

    text = verify(ref)
    message = one_line_error(text)
    assert victim in message
    assert layer["error"]["actual"] in message
    assert f"{victim.split(':')[1][:12]}: FAILED digest-mismatch" in text.stdout


def test_wrong_diff_id_in_config(registry: RunningRegistry) -> None:
    good = standard_image(12)
    wrong = "sha256:" + "ab" * 32
    image = build_image(
        [LayerSpec(make_tar({"f": random_bytes(4000, i)})) for i in range(2)],
        fmt="oci",
        diff_ids_override=[wrong, good.diff_ids[0]],
    )
    ref = push(registry, "corrupt/diffid", "t", image)
    run = verify(ref)
    assert run.exit_code == 1
    message = one_line_error(run)
    assert "diff_id" in message
    assert wrong in message
    assert image.layers[0].digest in message


def test_diff_id_count_mismatch(registry: RunningRegistry) -> None:
    image = build_image(
        [LayerSpec(make_tar({"f": b"1"})), LayerSpec(make_tar({"g": b"2"}))],
        fmt="docker",
        diff_ids_override=[sha for sha in standard_image(1).diff_ids[:1]],
    )
    run = verify(push(registry, "corrupt/count", "t", image))
    assert run.exit_code == 1
    assert "1 diff_ids for 2 layers" in one_line_error(run)


def test_pinned_to_another_digest(registry: RunningRegistry) -> None:
    image = standard_image(13)
    push(registry, "pin/img", "t", image)
    other = standard_image(14).manifest_digest
    run = verify(f"{registry.host}/pin/img:t@{other}")
    assert run.exit_code == 1
    message = one_line_error(run)
    assert other in message
    assert image.manifest_digest in message


def test_corrupt_manifest_served_for_its_digest(registry: RunningRegistry) -> None:
    image = standard_image(15)
    push(registry, "pin/corrupt", "t", image)
    # Still valid JSON (the registry parses what it serves), but other bytes.
    at = image.manifest.index(b'"size":') + len(b'"size":')
    while not image.manifest[at : at + 1].isdigit():
        at += 1
    digit = image.manifest[at : at + 1]
    other = b"7" if digit != b"7" else b"8"
    registry.replace_blob(
        image.manifest_digest, image.manifest[:at] + other + image.manifest[at + 1 :]
    )
    run = verify(f"{registry.host}/pin/corrupt@{image.manifest_digest}")
    assert run.exit_code == 1
    assert image.manifest_digest in one_line_error(run)


def test_missing_blob_is_an_integrity_failure(registry: RunningRegistry) -> None:
    image = standard_image(16)
    ref = push(registry, "gone/blob", "t", image)
    registry.delete_blob_file(image.layers[2].digest)
    registry.restart()
    run = verify("--retries", "0", ref)
    assert run.exit_code == 1
    message = one_line_error(run)
    assert image.layers[2].digest in message
    assert "does not have it" in message


def test_truncated_blob_is_a_size_mismatch(registry: RunningRegistry) -> None:
    image = standard_image(17)
    ref = push(registry, "short/blob", "t", image)
    victim = image.layers[0]
    registry.truncate_blob(victim.digest, victim.blob.size - 100)
    registry.restart()
    run = verify("--json", "--retries", "0", ref)
    assert run.exit_code == 1
    error = run.json()["images"][0]["layers"][0]["error"]
    assert error["kind"] == "size-mismatch"
    assert (error["expected"], error["actual"]) == (
        str(victim.blob.size),
        str(victim.blob.size - 100),
    )


# -- registry, usage and network errors ---------------------------------------------------


def test_unknown_tag_and_repository(shared_standard_image: PushedImage) -> None:
    host = shared_standard_image.registry.host
    for ref in (f"{host}/std/image:nope", f"{host}/no/such:v1"):
        run = verify(ref)
        assert run.exit_code == 3
        assert "not found" in one_line_error(run)


@pytest.mark.parametrize("bad", ["Upper/case", "a//b", "x@sha256:../../etc", "x@md5:abcd", ""])
def test_bad_references_exit_2(bad: str) -> None:
    run = verify(bad)
    assert run.exit_code == 2
    assert "invalid reference" in one_line_error(run)


def test_nothing_listening_is_a_network_error() -> None:
    run = verify("--retries", "0", f"127.0.0.1:{free_port()}/a/b:c")
    assert run.exit_code == 4
    assert "cannot connect" in one_line_error(run)


def test_basic_auth(basic_auth_registry: BasicAuthRegistry) -> None:
    from tests.kit.client import basic_auth_header

    image = standard_image(18)
    auth = basic_auth_header(basic_auth_registry.username, basic_auth_registry.password)
    push_image(basic_auth_registry.url, "private/img", "t", image, auth_header=auth)
    ref = f"{basic_auth_registry.host}/private/img:t"

    ok = verify(
        "-u",
        basic_auth_registry.username,
        "--password-stdin",
        ref,
        stdin=basic_auth_registry.password + "\n",
    )
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert basic_auth_registry.password not in ok.stdout + ok.stderr

    anonymous = verify(ref)
    assert anonymous.exit_code == 3
    assert "--username" in one_line_error(anonymous)

    wrong = verify(
        "-u", basic_auth_registry.username, "--password-stdin", ref, stdin="not-the-password\n"
    )
    assert wrong.exit_code == 3
    assert "denied" in one_line_error(wrong)


# -- the installed commands ---------------------------------------------------------------


def test_console_scripts_and_module(shared_standard_image: PushedImage) -> None:
    bindir = Path(sys.executable).parent
    ref = shared_standard_image.reference
    env = {**os.environ, "NO_COLOR": "1"}
    for cmd in (
        [str(bindir / "pull-verify"), ref],
        [str(bindir / "puller"), "verify", ref],
        [sys.executable, "-m", "puller", "verify", ref],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Digest: {shared_standard_image.digest}" in done.stdout
    helped = CliRunner().invoke(app, ["verify", "--help"])
    assert "Exit codes" in helped.stdout


def test_demo_image_verifies(shared_registry: RunningRegistry) -> None:
    image = demo_image()
    ref = push(shared_registry, "demo/app", "latest", image)
    run = verify("--json", "--jobs", "2", ref)
    assert run.exit_code == 0
    assert run.json()["images"][0]["uncompressed_size"] == sum(
        layer.uncompressed_size for layer in image.layers
    )
