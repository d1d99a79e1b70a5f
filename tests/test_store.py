"""``--output DIR`` and ``--store DIR``: verified OCI layouts that skopeo and umoci read.

Real registry, real corruption (bytes flipped in the registry's or the store's own files),
real independent readers (``skopeo inspect oci:``, ``umoci unpack``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from puller.manifest import host_platform
from tests.kit.cli import verify
from tests.kit.fixtures import PushedImage
from tests.kit.images import (
    BuiltImage,
    LayerSpec,
    build_image,
    build_index,
    make_tar,
    push_image,
    push_index,
    random_bytes,
    standard_image,
)
from tests.kit.registry import RunningRegistry

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def index_entries(layout: Path) -> list[dict[str, Any]]:
    doc = json.loads((layout / "index.json").read_text())
    entries: list[dict[str, Any]] = doc["manifests"]
    return entries


def blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexpart = digest.partition(":")
    return layout / "blobs" / algorithm / hexpart


def leftovers(root: Path) -> list[Path]:
    """Temporary files a finished or failed pull must not leave."""
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".layers-" in p.name]


def skopeo_inspect(target: str) -> dict[str, Any]:
    proc = subprocess.run(
        ["/usr/bin/skopeo", "inspect", target], capture_output=True, check=False, text=True
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def blob_gets(registry: RunningRegistry, digest: str) -> int:
    return sum("GET /v2/" in line and f"/blobs/{digest}" in line for line in registry.access_log())


# -- --output DIR ---------------------------------------------------------------------


def test_docker_schema2_image_becomes_an_oci_layout_skopeo_and_umoci_read(
    shared_standard_image: PushedImage, tmp_path: Path
) -> None:
    image = shared_standard_image.image
    out = tmp_path / "layout"
    run = verify(shared_standard_image.reference, "--output", str(out))
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"Saved: oci:{out}:v1" in run.stdout

    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    [entry] = index_entries(out)
    ann = entry["annotations"]
    assert ann[REF_NAME] == "v1"
    assert ann[CONTAINERD_NAME] == shared_standard_image.reference
    # Tools read only OCI manifests from a layout: the schema2 manifest is kept as a blob
    # (its registry digest) and an OCI manifest of the same verified blobs is tagged.
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert ann["io.pull-verify.source-digest"] == image.manifest_digest
    assert blob(out, image.manifest_digest).read_bytes() == image.manifest
    uncompressed = sum(layer.uncompressed_size for layer in image.layers)
    assert ann["io.pull-verify.uncompressed-size"] == str(uncompressed)
    for b in image.blobs:
        assert blob(out, b.digest).read_bytes() == b.data
    assert leftovers(out) == []

    doc = skopeo_inspect(f"oci:{out}:v1")
    assert doc["Digest"] == entry["digest"]
    assert doc["Layers"] == [layer.digest for layer in image.layers]
    assert doc["Created"] == "2024-01-01T00:00:00Z"

    bundle = tmp_path / "bundle"
    proc = subprocess.run(
        ["/usr/bin/umoci", "unpack", "--rootless", "--image", f"{out}:v1", str(bundle)],
        capture_output=True,
        check=False,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (bundle / "rootfs/bin/random.bin").read_bytes() == random_bytes(48 * 1024, 0)
    assert (bundle / "rootfs/etc/app/conf.txt").is_file()


def test_oci_image_keeps_the_registry_digest_and_skopeo_copies_it_out(
    shared_registry: RunningRegistry, tmp_path: Path
) -> None:
    image = standard_image(7, fmt="oci")
    push_image(shared_registry.url, "store/oci", "v2", image)
    out = tmp_path / "layout"
    run = verify(f"{shared_registry.host}/store/oci:v2", "-o", str(out))
    assert run.exit_code == 0, run.stdout + run.stderr
    [entry] = index_entries(out)
    assert entry["digest"] == image.manifest_digest
    assert blob(out, image.manifest_digest).read_bytes() == image.manifest
    # skopeo copy reads every blob and checks its digest on the way out.
    proc = subprocess.run(
        ["/usr/bin/skopeo", "copy", "--quiet", f"oci:{out}:v2", f"dir:{tmp_path / 'copy'}"],
        capture_output=True,
        check=False,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "copy/manifest.json").read_bytes() == image.manifest


def test_corrupt_layer_leaves_no_tag_and_no_blob_under_its_name(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    image = standard_image(3)
    push_image(registry.url, "store/bad", "v1", image)
    damaged = image.layers[1].digest
    registry.flip_byte(damaged)
    out = tmp_path / "layout"
    run = verify(f"{registry.host}/store/bad:v1", "--retries", "0", "-o", str(out))
    assert run.exit_code == 1, run.stdout + run.stderr
    assert damaged in run.stderr
    assert "Saved:" not in run.stdout
    assert not (out / "index.json").exists()  # nothing names the image
    assert not blob(out, damaged).exists()
    assert not blob(out, image.manifest_digest).exists()
    assert leftovers(out) == []
    # The good layers are verified content: kept, each exactly as its digest says.
    for layer in (image.layers[0], image.layers[2]):
        assert hashlib.sha256(blob(out, layer.digest).read_bytes()).hexdigest() == layer.digest[7:]


def test_index_pull_tags_this_platforms_manifest_and_all_platforms_lists_each(
    shared_registry: RunningRegistry, tmp_path: Path
) -> None:
    here = host_platform()
    other = "arm64" if here.architecture != "arm64" else "amd64"
    tar = make_tar({"f": random_bytes(5000, 11)})
    mine = build_image([LayerSpec(tar)], fmt="oci", arch=here.architecture)
    theirs = build_image([LayerSpec(make_tar({"g": b"x"}))], fmt="oci", arch=other)
    index = build_index([theirs, mine], "oci", extra_attestation=True)
    push_index(shared_registry.url, "store/multi", "v1", index)
    ref = f"{shared_registry.host}/store/multi:v1"

    one = tmp_path / "one"
    run = verify(ref, "-o", str(one))
    assert run.exit_code == 0, run.stdout + run.stderr
    [entry] = index_entries(one)
    assert entry["digest"] == mine.manifest_digest
    assert entry["platform"]["architecture"] == here.architecture
    assert entry["annotations"]["io.pull-verify.source-digest"] == index.digest
    assert blob(one, index.digest).read_bytes() == index.manifest
    assert not blob(one, theirs.manifest_digest).exists()
    assert skopeo_inspect(f"oci:{one}:v1")["Digest"] == mine.manifest_digest

    every = tmp_path / "every"
    run = verify(ref, "--all-platforms", "-o", str(every))
    assert run.exit_code == 0, run.stdout + run.stderr
    entries = index_entries(every)
    assert {e["digest"] for e in entries} == {mine.manifest_digest, theirs.manifest_digest}
    tagged = [e for e in entries if REF_NAME in e.get("annotations", {})]
    assert [e["digest"] for e in tagged] == [mine.manifest_digest]
    assert skopeo_inspect(f"oci:{every}:v1")["Digest"] == mine.manifest_digest


# -- the store ------------------------------------------------------------------------


def _shared_layer_images() -> tuple[BuiltImage, BuiltImage, LayerSpec]:
    base = LayerSpec(make_tar({"base/lib.bin": random_bytes(64_000, 21)}))
    first = build_image([base, LayerSpec(make_tar({"app/one": b"one"}))], fmt="oci")
    second = build_image([base, LayerSpec(make_tar({"app/two": b"two" * 100}))], fmt="oci")
    return first, second, base


def test_store_shares_blobs_and_never_downloads_a_stored_layer_again(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    first, second, _ = _shared_layer_images()
    push_image(registry.url, "apps/one", "v1", first)
    push_image(registry.url, "apps/two", "v1", second)
    store = tmp_path / "store"
    shared = first.layers[0].digest
    assert second.layers[0].digest == shared

    run = verify(f"{registry.host}/apps/one:v1", "--store", str(store))
    assert run.exit_code == 0, run.stdout + run.stderr
    # Damage the registry's copy: the second pull can only pass if it does not fetch it.
    registry.flip_byte(shared)
    gets_before = blob_gets(registry, shared)
    run = verify(f"{registry.host}/apps/two:v1", "--store", str(store), "--retries", "0")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"{shared[7:19]}: Already verified in store" in run.stdout
    assert blob_gets(registry, shared) == gets_before

    entries = index_entries(store)
    names = sorted(e["annotations"][REF_NAME] for e in entries)
    assert names == [f"{registry.host}/apps/one:v1", f"{registry.host}/apps/two:v1"]
    layer_files = [p for p in (store / "blobs/sha256").iterdir()]
    assert len(layer_files) == len(
        {
            *(b.digest for b in first.blobs),
            *(b.digest for b in second.blobs),
            first.manifest_digest,
            second.manifest_digest,
        }
    )
    # The store holds many repositories: the full reference is the ref name skopeo takes.
    assert skopeo_inspect(f"oci:{store}:{registry.host}/apps/two:v1")["Digest"] == (
        second.manifest_digest
    )
    assert leftovers(store) == []


def test_a_stored_blob_is_not_trusted_for_another_diff_id(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    first, _, base = _shared_layer_images()
    push_image(registry.url, "apps/one", "v1", first)
    liar = build_image([base], fmt="oci", diff_ids_override=["sha256:" + "ab" * 32])
    push_image(registry.url, "apps/liar", "v1", liar)
    store = tmp_path / "store"
    assert verify(f"{registry.host}/apps/one:v1", "--store", str(store)).exit_code == 0
    run = verify(f"{registry.host}/apps/liar:v1", "--store", str(store))
    assert run.exit_code == 1, run.stdout + run.stderr
    assert "diff_id" in run.stderr
    assert "Already verified" not in run.stdout
    assert [e["annotations"][REF_NAME] for e in index_entries(store)] == [
        f"{registry.host}/apps/one:v1"
    ]


def test_a_stored_blob_is_not_trusted_under_another_layer_type(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    tar = make_tar({"same.bin": random_bytes(20_000, 77)})
    honest = build_image([LayerSpec(tar)], fmt="oci")
    mislabelled = build_image(
        [LayerSpec(tar, media_type="application/vnd.oci.image.layer.v1.tar+zstd")], fmt="oci"
    )
    # Same blob, same diff_id claimed; only the layer type differs.
    assert honest.layers[0].digest == mislabelled.layers[0].digest
    assert honest.diff_ids == mislabelled.diff_ids
    push_image(registry.url, "types/honest", "v1", honest)
    push_image(registry.url, "types/zstd", "v1", mislabelled)
    store = tmp_path / "store"
    assert verify(f"{registry.host}/types/honest:v1", "--store", str(store)).exit_code == 0
    run = verify(f"{registry.host}/types/zstd:v1", "--store", str(store))
    assert run.exit_code == 1, run.stdout + run.stderr
    assert "Already verified" not in run.stdout
    assert "zstd" in run.stderr


def test_reverify_rehashes_the_stored_copy_and_repairs_it(
    shared_registry: RunningRegistry, tmp_path: Path
) -> None:
    image = standard_image(5, fmt="oci")
    push_image(shared_registry.url, "store/rev", "v1", image)
    ref = f"{shared_registry.host}/store/rev:v1"
    store = tmp_path / "store"
    assert verify(ref, "--store", str(store)).exit_code == 0
    stored = blob(store, image.layers[0].digest)
    damaged = bytearray(stored.read_bytes())
    damaged[100] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    trusting = verify(ref, "--store", str(store))
    assert trusting.exit_code == 0
    assert trusting.stdout.count("Already verified in store") == 3

    run = verify(ref, "--store", str(store), "--reverify")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "Re-verification failed, fetched again" in run.stdout
    assert image.layers[0].digest in run.stdout
    assert run.stdout.count("Already verified in store") == 2
    assert stored.read_bytes() == image.layers[0].blob.data


def test_usage_errors_are_one_line_with_exit_code_2(
    shared_standard_image: PushedImage, tmp_path: Path
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["-o", str(busy)], "is not empty and is not an OCI image layout"),
        (["--format", "docker-archive"], "needs --output"),
        (["--reverify"], "--reverify needs"),
        (["--format", "tar"], "unknown --format"),
        (["-o", str(tmp_path / "x"), "--store", str(tmp_path / "y")], "give one"),
    ]
    for args, text in cases:
        run = verify(shared_standard_image.reference, *args)
        assert run.exit_code == 2, (args, run.stdout, run.stderr)
        lines = [line for line in run.stderr.splitlines() if line.startswith("pull-verify:")]
        assert len(lines) == 1, (args, run.stderr)
        assert text in lines[0], (args, run.stderr)
        assert "Traceback" not in run.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_json_tells_a_layer_taken_from_the_store_from_one_checked_now(
    shared_registry: RunningRegistry, tmp_path: Path
) -> None:
    image = standard_image(6, fmt="oci")
    push_image(shared_registry.url, "store/json", "v1", image)
    ref = f"{shared_registry.host}/store/json:v1"
    store = tmp_path / "store"
    first = verify("--json", ref, "--store", str(store))
    again = verify("--json", ref, "--store", str(store))
    assert (first.exit_code, again.exit_code) == (0, 0)
    names = [{c["name"] for c in run.json()["images"][0]["checks"]} for run in (first, again)]
    assert {"layer-digest", "diff-id"} <= names[0]
    assert not names[0] & {"stored-layer-digest", "stored-diff-id"}
    assert {"stored-layer-digest", "stored-diff-id"} <= names[1]
    assert not names[1] & {"layer-digest", "diff-id"}
