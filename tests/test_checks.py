"""The shared checks on manifests and configs: what they record, what they raise."""

from __future__ import annotations

import pytest

from puller import mediatypes as mt
from puller.checks import check_child, check_config, check_config_size, check_manifest
from puller.digest import Digest
from puller.errors import ContentDigestMismatch, DigestMismatch, InvalidContent, SizeMismatch
from puller.manifest import Descriptor
from puller.report import Check

DATA = b'{"schemaVersion": 2}\n'
RIGHT = Digest.of(DATA)
WRONG = Digest.of(b"other")


def test_manifest_pin_and_header_both_recorded() -> None:
    checks: list[Check] = []
    got = check_manifest(DATA, subject="m", pinned=RIGHT, content_digest=str(RIGHT), checks=checks)
    assert got == RIGHT
    assert [(c.name, c.ok) for c in checks] == [
        ("manifest-digest", True),
        ("docker-content-digest", True),
    ]


def test_manifest_digest_uses_the_pins_then_the_headers_algorithm() -> None:
    sha512 = Digest.of(DATA, "sha512")
    assert (
        check_manifest(DATA, subject="m", pinned=None, content_digest=str(sha512), checks=[])
        == sha512
    )
    assert check_manifest(DATA, subject="m", pinned=None, content_digest=None, checks=[]) == RIGHT


def test_manifest_wrong_pin_and_wrong_header() -> None:
    checks: list[Check] = []
    with pytest.raises(DigestMismatch) as pin:
        check_manifest(DATA, subject="m", pinned=WRONG, content_digest=None, checks=checks)
    assert (pin.value.expected, pin.value.actual) == (str(WRONG), str(RIGHT))
    assert checks == [Check("manifest-digest", "m", str(WRONG), str(RIGHT), False)]
    with pytest.raises(ContentDigestMismatch):
        check_manifest(DATA, subject="m", pinned=None, content_digest=str(WRONG), checks=[])
    with pytest.raises(InvalidContent):
        check_manifest(DATA, subject="m", pinned=None, content_digest="sha256:nope", checks=[])


def test_child_digest_and_size() -> None:
    entry = Descriptor(mt.OCI_MANIFEST, RIGHT, len(DATA))
    check_child(entry, DATA, subject="c", checks=[])
    with pytest.raises(SizeMismatch):
        check_child(Descriptor(mt.OCI_MANIFEST, RIGHT, len(DATA) + 1), DATA, subject="c", checks=[])
    checks: list[Check] = []
    with pytest.raises(DigestMismatch):
        check_child(Descriptor(mt.OCI_MANIFEST, WRONG, len(DATA)), DATA, subject="c", checks=checks)
    assert checks[0].ok is False


def test_config_records_its_digest_check_even_when_the_size_is_wrong() -> None:
    checks: list[Check] = []
    with pytest.raises(SizeMismatch):
        check_config(
            Descriptor(mt.OCI_CONFIG, RIGHT, len(DATA) + 5), DATA, subject="cfg", checks=checks
        )
    assert checks == [Check("config-digest", "cfg", str(RIGHT), str(RIGHT), True)]
    checks.clear()
    with pytest.raises(DigestMismatch):
        check_config(
            Descriptor(mt.OCI_CONFIG, WRONG, len(DATA)), DATA, subject="cfg", checks=checks
        )
    assert checks == [Check("config-digest", "cfg", str(WRONG), str(RIGHT), False)]
    with pytest.raises(InvalidContent, match="limit"):
        check_config_size(Descriptor(mt.OCI_CONFIG, RIGHT, 1 << 40), subject="cfg")
