"""The test kit works: real registries start, real images go in and come out byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import zstandard

import tests.kit.registry as kit_registry
from tests.kit.client import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    KitHTTPError,
    basic_auth_header,
    get_blob,
    get_manifest,
    request,
)
from tests.kit.images import (
    MEDIA_OCI_LAYER_ZSTD,
    Format,
    LayerSpec,
    build_image,
    build_index,
    gzip_multi_member,
    make_tar,
    push_image,
    push_index,
    random_bytes,
    sha256_digest,
    standard_image,
    text_like_bytes,
    zstd_compress,
)
from tests.kit.producers import skopeo_inspect, skopeo_inspect_digest, umoci_image
from tests.kit.registry import (
    BasicAuthRegistry,
    RegistryConfig,
    RegistryStartError,
    RunningRegistry,
    free_port,
    require_binary,
    start_registry,
)
from tests.kit.tokens import Access, TokenIssuer

if TYPE_CHECKING:
    from tests.kit.fixtures import PushedImage, RegistryFactory

pytest_plugins = ["tests.kit.fixtures"]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- building (pure)


def test_make_tar_is_deterministic_and_has_parent_dirs() -> None:
    files = {"b/c/file.txt": b"hello", "a.bin": b"\x00" * 10}
    tar = make_tar(files)
    assert tar == make_tar(dict(reversed(files.items())))
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        names = tf.getnames()
        assert names == ["a.bin", "b", "b/c", "b/c/file.txt"]
        member = tf.extractfile("b/c/file.txt")
        assert member is not None
        assert member.read() == b"hello"


def test_compressions_round_trip_and_have_several_members() -> None:
    data = make_tar({"x": text_like_bytes(100_000, 1), "y": random_bytes(30_000, 2)})
    multi = gzip_multi_member(data, members=4)
    assert multi.count(b"\x1f\x8b\x08") >= 4
    assert gzip.decompress(multi) == data
    frames = zstd_compress(data, frames=3)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames), read_across_frames=True)
    assert reader.read() == data
    assert random_bytes(64, 7) == random_bytes(64, 7) != random_bytes(64, 8)
    assert len(gzip.compress(text_like_bytes(100_000, 3))) < 100_000 // 3


def test_build_image_config_and_manifest_agree() -> None:
    image = build_image(
        [
            LayerSpec(make_tar({"a": b"1"}), compression="zstd", parts=2),
            LayerSpec(make_tar({"b": b"2"}), compression="none"),
        ],
        fmt="oci",
        arch="arm64",
        variant="v8",
        manifest_trailing_newline=True,
    )
    assert image.manifest.endswith(b"}\n")
    manifest = json.loads(image.manifest)
    config = json.loads(image.config.data)
    assert manifest["config"]["digest"] == image.image_id == _sha(image.config.data)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        MEDIA_OCI_LAYER_ZSTD,
        "application/vnd.oci.image.layer.v1.tar",
    ]
    assert config["rootfs"]["diff_ids"] == image.diff_ids
    assert (config["architecture"], config["os"], config["variant"]) == ("arm64", "linux", "v8")
    assert image.layers[1].blob.data == make_tar({"b": b"2"})
    with pytest.raises(ValueError, match="zstd"):
        build_image([LayerSpec(b"", compression="zstd")], fmt="docker")
    bad = build_image([LayerSpec(make_tar({"a": b"1"}))], fmt="docker", diff_ids_override=["x"])
    assert json.loads(bad.config.data)["rootfs"]["diff_ids"] == ["x"]


# -- registries


def test_registry_answers_v2(registry: RunningRegistry) -> None:
    resp = request("GET", f"{registry.url}/v2/")
    assert resp.status == 200
    assert resp.header("Docker-Distribution-Api-Version") == "registry/2.0"
    assert resp.header("X-Content-Type-Options") == "nosniff"
    assert registry.host.startswith("127.0.0.1:")
    assert registry.log_path.is_file()
    assert any('"GET /v2/ HTTP/1.1" 200' in line for line in registry.access_log())


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    # The process dies at once (bad storage driver): the error carries its log.
    config = RegistryConfig(root=tmp_path / "a", extra={"storage": {"nosuchdriver": {}}})
    with pytest.raises(RegistryStartError, match=r"(?s)exited.*nosuchdriver"):
        start_registry(config)
    # A port someone else holds is refused before starting.
    with start_registry(RegistryConfig(root=tmp_path / "b")) as first:
        with pytest.raises(RegistryStartError, match="address already in use"):
            start_registry(RegistryConfig(root=tmp_path / "c", port=first.config.port))
        assert request("GET", f"{first.url}/v2/").status == 200


def test_auto_port_retries_when_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_registry(RegistryConfig(root=tmp_path / "holder")) as holder:
        ports = iter([holder.config.port, free_port()])
        monkeypatch.setattr(kit_registry, "free_port", lambda host="127.0.0.1": next(ports))
        with start_registry(RegistryConfig(root=tmp_path / "second")) as second:
            assert second.config.port != holder.config.port
            assert request("GET", f"{second.url}/v2/").status == 200


def test_require_binary_names_make_target() -> None:
    with pytest.raises(RuntimeError, match=r"/nonexistent/docker-registry.*make deps"):
        require_binary("/nonexistent/docker-registry")


def test_client_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        request("GET", "http://192.0.2.1/v2/")


@pytest.mark.parametrize(("fmt", "newline"), [("docker", False), ("oci", False), ("oci", True)])
def test_push_then_get_manifest_exact_bytes(
    registry: RunningRegistry, fmt: Format, newline: bool
) -> None:
    image = standard_image(3, fmt=fmt)
    if newline:
        image = build_image(
            [LayerSpec(make_tar({"f": b"x"}))], fmt=fmt, manifest_trailing_newline=True
        )
    digest = push_image(registry.url, "kit/app", "v1", image)
    assert digest == image.manifest_digest
    for ref in ("v1", digest):
        resp = get_manifest(registry.url, "kit/app", ref)
        assert resp.body == image.manifest
        assert resp.header("Docker-Content-Digest") == _sha(resp.body) == digest
        assert resp.header("Content-Type") == image.manifest_media_type
    # Pushing again is a no-op for blobs (HEAD says they exist).
    assert push_image(registry.url, "kit/app", "v2", image) == digest


def test_blob_get_and_range(shared_standard_image: PushedImage) -> None:
    pushed = shared_standard_image
    for blob in pushed.image.blobs:
        resp = get_blob(pushed.registry.url, pushed.repo, blob.digest)
        assert resp.body == blob.data
        assert resp.header("Content-Length") == str(blob.size)
    layer = pushed.image.layers[0].blob
    part = get_blob(pushed.registry.url, pushed.repo, layer.digest, byte_range=(10, 99))
    assert part.status == 206
    assert part.body == layer.data[10:100]
    assert part.header("Content-Range") == f"bytes 10-99/{layer.size}"


def test_storage_damage_reaches_clients(registry: RunningRegistry) -> None:
    image = standard_image(5)
    push_image(registry.url, "kit/bad", "v1", image)
    blob = image.layers[0].blob
    at = registry.flip_byte(blob.digest)
    served = get_blob(registry.url, "kit/bad", blob.digest).body
    assert len(served) == blob.size
    assert served != blob.data
    assert served[at] == blob.data[at] ^ 0xFF
    assert _sha(served) != blob.digest

    other = image.layers[1].blob
    registry.truncate_blob(other.digest, 100)
    cut = get_blob(registry.url, "kit/bad", other.digest)
    # The descriptor cache still says the old size: the body ends early.
    assert cut.header("Content-Length") == str(other.size)
    assert not cut.complete
    assert len(cut.body) == 100
    registry.restart()
    after = get_blob(registry.url, "kit/bad", other.digest)
    assert after.complete
    assert after.body == other.data[:100]
    assert after.header("Content-Length") == "100"

    third = image.layers[2].blob
    registry.delete_blob_file(third.digest)
    registry.restart()
    with pytest.raises(KitHTTPError) as info:
        get_blob(registry.url, "kit/bad", third.digest)
    assert info.value.status == 404


def test_basic_auth_registry(basic_auth_registry: BasicAuthRegistry) -> None:
    reg = basic_auth_registry
    assert reg.username == "tester"
    assert len(reg.password) >= 16
    denied = request("GET", f"{reg.url}/v2/")
    assert denied.status == 401
    assert (denied.header("WWW-Authenticate") or "").startswith("Basic realm=")
    wrong = request(
        "GET", f"{reg.url}/v2/", headers={"Authorization": basic_auth_header("tester", "no")}
    )
    assert wrong.status == 401
    ok = request("GET", f"{reg.url}/v2/", headers={"Authorization": reg.auth_header})
    assert ok.status == 200
    image = standard_image(9)
    push_image(reg.url, "kit/private", "v1", image, auth_header=reg.auth_header)
    resp = get_manifest(reg.url, "kit/private", "v1", auth_header=reg.auth_header)
    assert resp.body == image.manifest


def test_token_auth_registry(registry_factory: RegistryFactory, tmp_path: Path) -> None:
    issuer = TokenIssuer.create(tmp_path / "token")
    realm = f"http://127.0.0.1:{free_port()}/token"
    reg = registry_factory(token_auth=issuer.auth_config(realm))
    denied = request("GET", f"{reg.url}/v2/kit/tok/manifests/v1")
    assert denied.status == 401
    challenge = denied.header("WWW-Authenticate") or ""
    assert challenge.startswith(f'Bearer realm="{realm}"')
    assert 'scope="repository:kit/tok:pull"' in challenge

    token = issuer.mint([Access("kit/tok", ("pull", "push"))])
    image = standard_image(11)
    push_image(reg.url, "kit/tok", "v1", image, auth_header=f"Bearer {token}")
    resp = get_manifest(reg.url, "kit/tok", "v1", auth_header=f"Bearer {token}")
    assert resp.body == image.manifest
    # A token for another repository, or from another issuer, is refused.
    for bad in (
        issuer.mint([Access("kit/other")]),
        issuer.mint([Access("kit/tok")], issuer="someone-else"),
    ):
        refused = request(
            "GET",
            f"{reg.url}/v2/kit/tok/manifests/v1",
            headers={"Authorization": f"Bearer {bad}"},
        )
        assert refused.status == 401


def test_index_with_attestation(registry: RunningRegistry) -> None:
    amd = standard_image(1, fmt="oci")
    arm = build_image([LayerSpec(make_tar({"a": b"arm"}))], fmt="oci", arch="arm64", variant="v8")
    index = build_index([amd, arm], "oci", extra_attestation=True)
    digest = push_index(registry.url, "kit/multi", "latest", index)
    resp = get_manifest(registry.url, "kit/multi", "latest")
    assert resp.body == index.manifest
    assert resp.header("Docker-Content-Digest") == digest == _sha(index.manifest)
    assert resp.header("Content-Type") == MEDIA_OCI_INDEX
    entries = json.loads(resp.body)["manifests"]
    platforms = [(e["platform"]["os"], e["platform"]["architecture"]) for e in entries]
    unknown = ("unknown", "unknown")
    assert platforms == [("linux", "amd64"), ("linux", "arm64"), unknown, unknown]
    for child in index.children:
        assert get_manifest(registry.url, "kit/multi", child.manifest_digest).body == (
            child.manifest
        )
    # skopeo resolves the index to this machine's platform (amd64).
    assert skopeo_inspect(registry.host, "kit/multi", "latest")["Digest"] == digest


def test_pull_through_cache(registry_factory: RegistryFactory) -> None:
    upstream = registry_factory()
    image = standard_image(21, fmt="oci")
    push_image(upstream.url, "library/app", "v1", image)
    cache = registry_factory(proxy_remote_url=upstream.url)
    resp = get_manifest(cache.url, "library/app", "v1")
    assert resp.body == image.manifest
    assert get_blob(cache.url, "library/app", image.layers[0].digest).body == (
        image.layers[0].blob.data
    )
    refused = request("POST", f"{cache.url}/v2/library/app/blobs/uploads/", body=b"")
    assert refused.status == 405


# -- independent producers


def test_umoci_skopeo_producer(registry: RunningRegistry, tmp_path: Path) -> None:
    files = {"bin/app": b"#!/bin/sh\necho hi\n", "etc/app.conf": text_like_bytes(5000, 1)}
    digest = umoci_image(tmp_path / "oci", registry.host, "um/app", "oci", files=files)
    assert skopeo_inspect_digest(registry.host, "um/app", "oci") == digest
    resp = get_manifest(registry.url, "um/app", "oci")
    assert _sha(resp.body) == digest
    assert resp.header("Content-Type") == MEDIA_OCI_MANIFEST

    v2s2 = umoci_image(tmp_path / "v2s2", registry.host, "um/app", "v2s2", files=files, fmt="v2s2")
    manifest = get_manifest(registry.url, "um/app", "v2s2")
    assert manifest.header("Content-Type") == MEDIA_DOCKER_MANIFEST
    assert _sha(manifest.body) == v2s2
    info = skopeo_inspect(registry.host, "um/app", v2s2)
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")

    zstd = umoci_image(
        tmp_path / "zstd",
        registry.host,
        "um/app",
        "zstd",
        files=files,
        more_layers=[{"opt/extra.bin": random_bytes(3000, 2)}],
        compression="zstd",
    )
    doc = json.loads(get_manifest(registry.url, "um/app", zstd).body)
    assert [layer["mediaType"] for layer in doc["layers"]] == [MEDIA_OCI_LAYER_ZSTD] * 2
    config = json.loads(get_blob(registry.url, "um/app", doc["config"]["digest"]).body)
    assert config["config"]["Cmd"] == ["/bin/app"]
    assert len(config["rootfs"]["diff_ids"]) == 2
    # The zstd layer's diff_id is the sha256 of what it decompresses to.
    layer = get_blob(registry.url, "um/app", doc["layers"][0]["digest"]).body
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(layer)).read()
    assert sha256_digest(tar) == config["rootfs"]["diff_ids"][0]
