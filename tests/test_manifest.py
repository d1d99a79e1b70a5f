"""Manifest, index and config parsing: real shapes, hostile shapes, platform choice."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puller import mediatypes as mt
from puller.digest import Digest, parse_digest
from puller.errors import InvalidContent, PullVerifyError, UnsupportedContent
from puller.imageconfig import parse_config
from puller.manifest import (
    ImageIndex,
    ImageManifest,
    Platform,
    choose_platform,
    parse_manifest,
    parse_platform,
)

D1 = str(Digest.of(b"one"))
D2 = str(Digest.of(b"two"))
D3 = str(Digest.of(b"three"))


def image_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": 20}],
    }
    doc.update(over)
    return doc


def entry(digest: str, os_: str, arch: str, variant: str | None = None) -> dict[str, Any]:
    platform: dict[str, str] = {"os": os_, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": 5, "platform": platform}


def test_image_manifest_fields() -> None:
    m = parse_manifest(json.dumps(image_doc()).encode())
    assert isinstance(m, ImageManifest)
    assert m.config.digest == parse_digest(D1)
    assert [layer.size for layer in m.layers] == [20]


def test_media_type_falls_back_to_header_then_shape() -> None:
    doc = image_doc()
    del doc["mediaType"]
    assert parse_manifest(json.dumps(doc).encode(), mt.DOCKER_MANIFEST).media_type == (
        mt.DOCKER_MANIFEST
    )
    assert parse_manifest(json.dumps(doc).encode()).media_type == mt.OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": [entry(D1, "linux", "amd64")]}
    assert isinstance(parse_manifest(json.dumps(index).encode()), ImageIndex)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"layers": "no"}, "layers"),
        ({"config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": -1}}, "out of range"),
        ({"config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 2**60}}, "out of range"),
        ({"config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": True}}, "size"),
        (
            {"config": {"mediaType": mt.OCI_CONFIG, "digest": "sha256:../../etc", "size": 1}},
            "digest",
        ),
        ({"config": {"mediaType": mt.OCI_CONFIG, "digest": "md5:abcd", "size": 1}}, "algorithm"),
        ({"schemaVersion": 3}, "schemaVersion"),
    ],
)
def test_hostile_manifests_are_invalid_content(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidContent, match=problem):
        parse_manifest(json.dumps(image_doc(**change)).encode())


def test_unknown_manifest_type_and_schema1_are_unsupported() -> None:
    with pytest.raises(UnsupportedContent):
        parse_manifest(json.dumps(image_doc(mediaType="application/x-what")).encode())
    with pytest.raises(UnsupportedContent, match="schema1"):
        parse_manifest(b'{"schemaVersion": 1, "fsLayers": []}')


def test_oversized_manifest_is_refused() -> None:
    with pytest.raises(InvalidContent, match="limit"):
        parse_manifest(b" " * (5 << 20))


def test_platform_choice_skips_attestations_and_prefers_default_variant() -> None:
    attestation = entry(D3, "unknown", "unknown")
    index = ImageIndex(
        mt.OCI_INDEX,
        tuple(
            parse_manifest(
                json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": mt.OCI_INDEX,
                        "manifests": [
                            entry(D1, "linux", "arm64", "v8"),
                            entry(D2, "linux", "amd64"),
                            attestation,
                        ],
                    }
                ).encode()
            ).manifests  # type: ignore[union-attr]
        ),
    )
    assert str(choose_platform(index, Platform("linux", "amd64")).digest) == D2
    assert str(choose_platform(index, Platform("linux", "arm64")).digest) == D1
    assert len(index.images()) == 2
    with pytest.raises(UnsupportedContent, match="offers: linux/arm64/v8, linux/amd64"):
        choose_platform(index, Platform("linux", "s390x"))
    with pytest.raises(UnsupportedContent):
        choose_platform(index, Platform("unknown", "unknown"))


def test_parse_platform() -> None:
    assert parse_platform("linux/arm/v7") == Platform("linux", "arm", "v7")
    with pytest.raises(PullVerifyError):
        parse_platform("linux")


def test_config_diff_ids() -> None:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
    }
    parsed = parse_config(json.dumps(config).encode())
    assert [str(d) for d in parsed.diff_ids] == [D1, D2]
    assert parsed.platform == Platform("linux", "amd64")
    with pytest.raises(InvalidContent, match="diff_id"):
        parse_config(json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:zz"]}}).encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "manifests"]),
            json_values,
        ).map(lambda d: json.dumps({"schemaVersion": 2, **d}).encode()),
    )
)
def test_any_manifest_bytes_give_a_value_or_a_typed_error(data: bytes) -> None:
    with contextlib.suppress(PullVerifyError):
        parse_manifest(data)


@settings(max_examples=200, deadline=None)
@given(json_values.map(lambda v: json.dumps({"rootfs": v, "os": v}).encode()) | st.binary())
def test_any_config_bytes_give_a_value_or_a_typed_error(data: bytes) -> None:
    with contextlib.suppress(PullVerifyError):
        parse_config(data)
