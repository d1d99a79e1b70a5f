"""LayerVerifier and BlobVerifier on real compressed bytes: any chunking, any truncation."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from puller.digest import Digest
from puller.errors import (
    DecompressionError,
    DiffIDMismatch,
    DigestMismatch,
    IntegrityError,
    LayerTooLarge,
    SizeMismatch,
)
from puller.mediatypes import Compression
from puller.verify import OUTPUT_CHUNK, BlobVerifier, LayerVerdict, LayerVerifier

RAW = os.urandom(150_000) + b"compressible text " * 20_000
GZIP_ONE = gzip.compress(RAW)
GZIP_MULTI = (
    gzip.compress(RAW[:70_000]) + gzip.compress(RAW[70_000:200_000]) + gzip.compress(RAW[200_000:])
)
ZSTD_MULTI = zstandard.ZstdCompressor().compress(RAW[:90_000]) + zstandard.ZstdCompressor(
    level=3
).compress(RAW[90_000:])

ENCODED = {
    "gzip": (Compression.GZIP, GZIP_ONE),
    "gzip-multi": (Compression.GZIP, GZIP_MULTI),
    "zstd-multi": (Compression.ZSTD, ZSTD_MULTI),
    "none": (Compression.NONE, RAW),
}


def verifier_for(
    compression: Compression, blob: bytes, raw: bytes = RAW, **kw: object
) -> LayerVerifier:
    return LayerVerifier(
        digest=Digest.of(blob),
        size=len(blob),
        compression=compression,
        diff_id=Digest.of(raw),
        subject="layer under test",
        **kw,  # type: ignore[arg-type]
    )


def feed_in(verifier: LayerVerifier, blob: bytes, cuts: list[int]) -> LayerVerdict:
    edges = sorted({0, len(blob), *(c % (len(blob) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        verifier.feed(blob[start:end])
    return verifier.finish()


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_each_compression_verifies(name: str) -> None:
    compression, blob = ENCODED[name]
    verdict = feed_in(verifier_for(compression, blob), blob, [])
    assert verdict.digest == Digest.of(blob)
    assert verdict.diff_id == Digest.of(RAW)
    assert (verdict.compressed_size, verdict.uncompressed_size) == (len(blob), len(RAW))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(ENCODED)), cuts=st.lists(st.integers(0, 10**7), max_size=40))
def test_any_chunking_gives_the_same_digests(name: str, cuts: list[int]) -> None:
    compression, blob = ENCODED[name]
    verdict = feed_in(verifier_for(compression, blob), blob, cuts)
    assert verdict.digest == Digest.of(blob)
    assert verdict.diff_id == Digest.of(RAW)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["gzip", "gzip-multi", "zstd-multi"]),
    keep=st.integers(0, 10**9),
)
def test_any_truncation_of_a_compressed_layer_fails(name: str, keep: int) -> None:
    compression, blob = ENCODED[name]
    cut = blob[: keep % len(blob)]
    # The descriptor describes the truncated bytes: the digest is right, the stream is not.
    verifier = verifier_for(compression, cut)
    with pytest.raises(DecompressionError):
        feed_in(verifier, cut, [len(cut) // 2])


def test_truncated_blob_against_the_real_descriptor_is_a_size_mismatch() -> None:
    verifier = verifier_for(Compression.GZIP, GZIP_ONE)
    verifier.feed(GZIP_ONE[:-10])
    with pytest.raises(SizeMismatch) as info:
        verifier.finish()
    assert info.value.expected == str(len(GZIP_ONE))
    assert info.value.actual == str(len(GZIP_ONE) - 10)


def test_bytes_past_the_descriptor_size_are_refused_at_once() -> None:
    verifier = verifier_for(Compression.GZIP, GZIP_ONE)
    with pytest.raises(SizeMismatch):
        verifier.feed(GZIP_ONE + b"x")
    assert verifier.bytes_read == 0


def test_flipped_byte_is_a_digest_mismatch_not_a_decompression_error() -> None:
    corrupt = bytearray(GZIP_ONE)
    corrupt[len(corrupt) // 2] ^= 0x01
    verifier = LayerVerifier(
        digest=Digest.of(GZIP_ONE),
        size=len(GZIP_ONE),
        compression=Compression.GZIP,
        diff_id=Digest.of(RAW),
        subject="layer X",
    )
    verifier.feed(bytes(corrupt))
    with pytest.raises(DigestMismatch) as info:
        verifier.finish()
    assert info.value.expected == str(Digest.of(GZIP_ONE))
    assert info.value.actual == str(Digest.of(bytes(corrupt)))
    assert "layer X" in str(info.value)


def test_wrong_diff_id_is_named_with_both_digests() -> None:
    wrong = Digest.of(b"something else")
    verifier = LayerVerifier(
        digest=Digest.of(GZIP_ONE),
        size=len(GZIP_ONE),
        compression=Compression.GZIP,
        diff_id=wrong,
        subject="layer Y",
    )
    verifier.feed(GZIP_ONE)
    with pytest.raises(DiffIDMismatch) as info:
        verifier.finish()
    assert info.value.expected == str(wrong)
    assert info.value.actual == str(Digest.of(RAW))


@pytest.mark.parametrize(
    ("tail", "problem"),
    [(b"\0\0\0\0", "trailing data"), (b"garbage!", "trailing data"), (b"\x1f", "trailing")],
)
def test_trailing_bytes_after_gzip_fail(tail: bytes, problem: str) -> None:
    blob = GZIP_ONE + tail
    with pytest.raises(DecompressionError, match=problem):
        feed_in(verifier_for(Compression.GZIP, blob), blob, [])


def test_not_gzip_at_all() -> None:
    with pytest.raises(DecompressionError, match="not a gzip stream"):
        feed_in(verifier_for(Compression.GZIP, RAW), RAW, [])


def test_decompression_bomb_stops_at_the_cap() -> None:
    zeros = gzip.compress(b"\0" * (32 << 20))
    verifier = verifier_for(Compression.GZIP, zeros, b"", max_uncompressed=4 << 20)
    with pytest.raises(LayerTooLarge):
        verifier.feed(zeros)
    assert verifier.uncompressed_size <= (4 << 20) + OUTPUT_CHUNK


@pytest.mark.parametrize(
    "lead",
    [b"", os.urandom(600_000)],
    ids=["zeros", "incompressible-then-zeros"],
)
def test_zstd_output_per_step_stays_bounded(lead: bytes) -> None:
    """A zstd block of zeros expands ~30000:1: a quarter megabyte of input can hold
    gigabytes. No step may decode more than OUTPUT_CHUNK, however the ratio jumps."""
    raw = lead + b"\0" * (64 << 20)
    blob = zstandard.ZstdCompressor(level=3).compress(raw)
    largest = 0

    def watch(chunk: bytes) -> None:
        nonlocal largest
        largest = max(largest, len(chunk))

    verifier = verifier_for(Compression.ZSTD, blob, raw, on_uncompressed=watch)
    verdict = feed_in(verifier, blob, list(range(0, len(blob), 256 << 10)))
    assert verdict.uncompressed_size == len(raw)
    assert largest <= OUTPUT_CHUNK


def test_zstd_bomb_stops_at_the_cap_before_it_is_decoded() -> None:
    raw = os.urandom(600_000) + b"\0" * (256 << 20)
    blob = zstandard.ZstdCompressor(level=3).compress(raw)
    assert len(blob) < 2 << 20  # the whole bomb arrives in a few socket reads
    verifier = verifier_for(Compression.ZSTD, blob, raw, max_uncompressed=4 << 20)
    with pytest.raises(LayerTooLarge):
        verifier.feed(blob)
    assert verifier.uncompressed_size <= (4 << 20) + OUTPUT_CHUNK


def test_uncompressed_consumer_sees_the_tar_stream() -> None:
    seen: list[bytes] = []
    verifier = verifier_for(Compression.GZIP, GZIP_MULTI, on_uncompressed=seen.append)
    feed_in(verifier, GZIP_MULTI, [1000, 5000])
    assert b"".join(seen) == RAW


def test_blob_verifier_reports_sizes_and_digests() -> None:
    data = random.Random(7).randbytes(1000)
    good = BlobVerifier(Digest.of(data), 1000, "config")
    good.update(data)
    assert good.finish() == Digest("sha256", hashlib.sha256(data).hexdigest())
    short = BlobVerifier(Digest.of(data), 1000, "config")
    short.update(data[:999])
    with pytest.raises(SizeMismatch):
        short.finish()


def test_integrity_errors_are_never_retryable() -> None:
    verifier = verifier_for(Compression.GZIP, GZIP_ONE)
    verifier.feed(GZIP_ONE[:-1])
    with pytest.raises(IntegrityError) as info:
        verifier.finish()
    assert info.value.retryable is False
