"""Hostile input: every malformed or lying document ends in one clear line, never a crash.

What the real registry accepts is pushed into it (it checks little beyond JSON and blob
presence); what it refuses to store is served by the fault proxy in front of it, as a
compromised mirror or a broken cache would serve it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import pytest
import zstandard

from tests.kit import cli
from tests.kit.cli import Run, one_line_error
from tests.kit.faultproxy import Fault, FaultProxy, Rule
from tests.kit.images import (
    Blob,
    BuiltImage,
    LayerSpec,
    build_image,
    make_tar,
    push_blob,
    push_image,
    push_manifest_bytes,
    random_bytes,
    sha256_digest,
)
from tests.kit.registry import RunningRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
REPO = "hostile/img"


def verify(*args: str) -> Run:
    return cli.verify("--retries", "0", *args)


def both(ref: str, *args: str) -> tuple[Run, str]:
    """The JSON report and the one-line error of the text run, which must agree on the code."""
    report = verify("--json", *args, ref)
    text = verify(*args, ref)
    assert report.exit_code == text.exit_code, (report.stdout, text.stderr)
    return report, one_line_error(text)


@pytest.fixture(scope="module")
def image(shared_registry: RunningRegistry) -> BuiltImage:
    built = build_image(
        [LayerSpec(make_tar({f"f{i}": random_bytes(20_000, 90 + i)})) for i in range(2)],
        fmt="oci",
    )
    push_image(shared_registry.url, REPO, "t", built)
    return built


def manifest_doc(image: BuiltImage) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(image.manifest)
    return doc


def serve_manifest(proxy: FaultProxy, body: bytes, *, chunked: bool = False) -> str:
    """Make the proxy answer every manifest GET with ``body``; return the tagged reference."""
    proxy.add(
        Rule(
            Fault.REPLACE_BODY,
            "/manifests/",
            body=body,
            headers={"Content-Type": OCI_MANIFEST},
            chunked=chunked,
            times=None,
        )
    )
    return f"{proxy.host}/{REPO}:t"


# -- malformed and oversized manifests (served by the proxy) -------------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"schemaVersion": 2, "layers": [', "not valid JSON"),
        (b"\xff\xfe\x00{}", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # nesting deep enough to recurse
        (b'{"schemaVersion": 3}', "schemaVersion is not 2"),
        (b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'"}', "config"),
        (b'{"schemaVersion": 2, "config": {}, "layers": {}}', "config"),
    ],
)
def test_malformed_manifest(proxy: FaultProxy, image: BuiltImage, body: bytes, said: str) -> None:
    report, line = both(serve_manifest(proxy, body))
    assert report.exit_code == 1
    assert report.error()["kind"] == "invalid-content"
    assert said in line
    assert REPO in line  # names the reference


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_manifest(proxy: FaultProxy, image: BuiltImage, chunked: bool) -> None:
    doc = manifest_doc(image)
    doc["annotations"] = {"padding": "x" * (5 << 20)}
    report, line = both(serve_manifest(proxy, json.dumps(doc).encode(), chunked=chunked))
    assert report.exit_code == 1
    assert report.error()["kind"] == "invalid-content"
    assert str(4 << 20) in line
    assert "limit" in line


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../etc",
        "sha256:../../../../../../etc/passwd",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:" + "G" * 64,
        "sha256:" + "A" * 64,  # uppercase hex is not canonical
        "sha256:" + "a" * 63,
        "sha256",
        "",
    ],
)
def test_hostile_layer_digest(proxy: FaultProxy, image: BuiltImage, digest: str) -> None:
    doc = manifest_doc(image)
    doc["layers"][1]["digest"] = digest
    report, line = both(serve_manifest(proxy, json.dumps(doc).encode()))
    assert report.exit_code == 1
    assert report.error()["kind"] == "invalid-content"
    assert "layer 1" in line
    assert repr(digest)[1:-1][:60] in line
    # Nothing was asked for under a path built from the hostile digest.
    assert not [r for r in proxy.log if "/blobs/" in r.path and "sha256:" not in r.path]
    assert not [r for r in proxy.log if ".." in r.path]


def test_hostile_config_digest_and_header(proxy: FaultProxy, image: BuiltImage) -> None:
    doc = manifest_doc(image)
    doc["config"]["digest"] = "sha512:../../etc"
    report, line = both(serve_manifest(proxy, json.dumps(doc).encode()))
    assert report.exit_code == 1
    assert "sha512:../../etc" in line

    proxy.clear()
    proxy.add(
        Rule(Fault.WRONG_DIGEST_HEADER, "/manifests/", digest_header="sha256:../x", times=None)
    )
    report, line = both(f"{proxy.host}/{REPO}:t")
    assert report.exit_code == 1
    assert report.error()["kind"] == "invalid-content"
    assert "Docker-Content-Digest" in line


@pytest.mark.parametrize("size", [-1, -(2**63), 2**60, 10**30, 1.5, "100", True, None])
def test_hostile_layer_size(proxy: FaultProxy, image: BuiltImage, size: object) -> None:
    doc = manifest_doc(image)
    doc["layers"][0]["size"] = size
    report, line = both(serve_manifest(proxy, json.dumps(doc).encode()))
    assert report.exit_code == 1
    assert report.error()["kind"] == "invalid-content"
    assert "layer 0" in line
    assert "size" in line


@pytest.mark.parametrize("size", [0, 1, 10**12])
def test_layer_size_that_lies(proxy: FaultProxy, image: BuiltImage, size: int) -> None:
    doc = manifest_doc(image)
    real = doc["layers"][0]["size"]
    doc["layers"][0]["size"] = size
    report, line = both(serve_manifest(proxy, json.dumps(doc).encode()))
    assert report.exit_code == 1
    error = report.error()
    assert error["kind"] == "size-mismatch"
    assert error["expected"] == str(size)
    assert image.layers[0].digest in line
    if size > real:
        assert error["actual"] == str(real)  # the registry's whole blob, and no more


def test_config_size_over_the_limit(proxy: FaultProxy, image: BuiltImage) -> None:
    doc = manifest_doc(image)
    doc["config"]["size"] = 1 << 40
    report, line = both(serve_manifest(proxy, json.dumps(doc).encode()))
    assert report.exit_code == 1
    assert str(8 << 20) in line
    assert image.config.digest in line
    assert not proxy.requests_for(image.config.digest)  # refused before any download


# -- hostile content the real registry stores ---------------------------------------------


def push_with_config(registry: RunningRegistry, tag: str, config: bytes, layers: list[Blob]) -> str:
    """Push layers and an arbitrary config blob, and an OCI manifest naming them."""
    config_blob = Blob(OCI_CONFIG, config)
    for blob in (config_blob, *layers):
        push_blob(registry.url, REPO, blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [blob.descriptor() for blob in layers],
    }
    push_manifest_bytes(registry.url, REPO, tag, json.dumps(manifest).encode(), OCI_MANIFEST)
    return f"{registry.host}/{REPO}:{tag}"


def config_with(diff_ids: object) -> bytes:
    return json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (b"<html>not a config</html>", "not valid JSON"),
        (b'"a string"', "not a JSON object"),
        (json.dumps({"rootfs": "layers"}).encode(), "rootfs"),
        (config_with("sha256:abc"), "diff_ids"),
        (config_with(["sha256:../../etc"]), "sha256:../../etc"),
    ],
)
def test_malformed_config(
    shared_registry: RunningRegistry, image: BuiltImage, config: bytes, said: str
) -> None:
    tag = "config-" + sha256_digest(config)[7:19]
    ref = push_with_config(shared_registry, tag, config, [image.layers[0].blob])
    report, line = both(ref)
    assert report.exit_code == 1
    assert report.error()["kind"] == "invalid-content"
    assert said in line
    assert sha256_digest(config) in line  # names the config blob


@pytest.mark.parametrize("count", [0, 1, 3])
def test_layer_and_diff_id_count_mismatch(
    shared_registry: RunningRegistry, image: BuiltImage, count: int
) -> None:
    diff_ids = (image.diff_ids * 2)[:count]
    ref = push_with_config(
        shared_registry, f"count-{count}", config_with(diff_ids), [x.blob for x in image.layers]
    )
    report, line = both(ref)
    assert report.exit_code == 1
    error = report.error()
    assert error["kind"] == "invalid-content"
    assert (error["expected"], error["actual"]) == ("2", str(count))
    assert f"{count} diff_ids for 2 layers" in line
    checks = {c["name"]: c["ok"] for c in report.json()["images"][0]["checks"]}
    assert checks["diff-id-count"] is False


def test_unknown_layer_media_type(shared_registry: RunningRegistry) -> None:
    tar = make_tar({"x": random_bytes(3000, 99)})
    layer = Blob("application/vnd.example.mystery.v1", gzip.compress(tar, mtime=0))
    ref = push_with_config(shared_registry, "mystery", config_with([sha256_digest(tar)]), [layer])
    report, line = both(ref)
    assert report.exit_code == 3
    assert report.error()["kind"] == "unsupported"
    assert "application/vnd.example.mystery.v1" in line
    assert layer.digest in line


# -- decompression bombs -----------------------------------------------------------------


BOMB_TAR_BYTES = 48 << 20  # a tar of zeros: compresses about a thousandfold


@pytest.fixture(scope="module")
def bombs(shared_registry: RunningRegistry) -> dict[str, str]:
    """A gzip and a zstd layer of tens of MiB of zeros, each under 100 kB compressed."""
    tar = make_tar({"zeros": bytes(BOMB_TAR_BYTES)})
    refs = {}
    for name, media_type, data in (
        ("gzip", OCI_GZIP, gzip.compress(tar, compresslevel=9, mtime=0)),
        ("zstd", OCI_ZSTD, zstandard.ZstdCompressor(level=19).compress(tar)),
    ):
        assert len(data) < 100_000
        layer = Blob(media_type, data)
        refs[name] = push_with_config(
            shared_registry, f"bomb-{name}", config_with([sha256_digest(tar)]), [layer]
        )
    return refs


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_decompression_bomb_stops_at_max_layer_size(bombs: dict[str, str], kind: str) -> None:
    report, line = both(bombs[kind], "--max-layer-size", "4M")
    assert report.exit_code == 1
    error = report.error()
    assert error["kind"] == "layer-too-large"
    assert error["expected"] == f"<={4 << 20}"
    assert "--max-layer-size" in line
    # Stopped early: far fewer compressed bytes read than the limit would inflate to.
    assert error["bytes_read"] < 100_000


def test_bomb_under_the_limit_verifies(bombs: dict[str, str]) -> None:
    run = verify("--json", "--max-layer-size", "64M", bombs["gzip"])
    assert run.exit_code == 0, run.stdout
    assert run.json()["images"][0]["uncompressed_size"] > BOMB_TAR_BYTES


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1X", ""])
def test_bad_max_layer_size_is_a_usage_error(value: str) -> None:
    run = verify("--max-layer-size", value, "127.0.0.1:1/a/b:c")
    assert run.exit_code == 2
    assert "size" in one_line_error(run)


# -- compressed streams that hash right but do not inflate right --------------------------


def corrupt_deflate(data: bytes) -> bytes:
    """A gzip member with its deflate data damaged: the header is fine, the stream is not."""
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda gz: gz + b"\0" * 16, "trailing data"),
        (lambda gz: gz + b"<html>cache error</html>", "trailing data"),
        (lambda gz: gz[: len(gz) - 9], "truncated"),
        (corrupt_deflate, "gzip"),
    ],
)
def test_layer_whose_stream_is_broken(
    proxy: FaultProxy,
    shared_registry: RunningRegistry,
    damage: Callable[[bytes], bytes],
    said: str,
) -> None:
    tar = make_tar({"payload": random_bytes(50_000, 123)})
    data = damage(gzip.compress(tar, mtime=0))
    layer = Blob(OCI_GZIP, data)  # the descriptor vouches for the damaged bytes
    tag = "stream-" + layer.digest[7:19]
    push_with_config(shared_registry, tag, config_with([sha256_digest(tar)]), [layer])
    ref = f"{proxy.host}/{REPO}:{tag}"
    report, line = both(ref)
    assert report.exit_code == 1
    error = report.error()
    assert error["kind"] in ("decompression-error", "diff-id-mismatch")
    if error["kind"] == "decompression-error":
        assert said in line
    assert layer.digest in line
    assert len(proxy.requests_for(layer.digest)) == 2  # one per run: never retried
