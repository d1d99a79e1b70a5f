"""Incremental verification of blobs and layers: feed chunks, then finish.

Layer: pure (no I/O). The pipeline feeds whatever chunking the network gives; results do
not depend on it. A consumer cannot "finish" unverified content: ``finish()`` raises the
typed integrity error instead of returning.

One pass computes everything for a layer:

    bytes as sent ──> sha256 + count (never past the descriptor size)
                  └─> inflate (gzip members / zstd frames / none) ──> sha256 + count = diff_id

The compressed digest is judged first: a stream that both fails to inflate and hashes
wrong is reported as a digest mismatch, since the bytes, not the producer, are at fault.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from isal import igzip_lib

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

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the same module, backported
    from backports import zstd

# Inflate at most this much per step, so memory stays bounded; smaller pieces cost GIL
# round trips (64 KiB made a single-layer pull ~15% slower).
OUTPUT_CHUNK = 256 << 10
_GZIP_MAGIC = b"\x1f\x8b"

Consumer = Callable[[bytes], None]


class BlobVerifier:
    """sha256 and byte count of a blob as sent, refusing anything past its declared size."""

    def __init__(self, digest: Digest, size: int, subject: str) -> None:
        self.digest = digest
        self.size = size
        self.subject = subject
        self._hash = digest.hasher()
        self.bytes_read = 0

    def update(self, chunk: bytes | memoryview) -> None:
        new_total = self.bytes_read + len(chunk)
        if new_total > self.size:
            raise SizeMismatch(
                f"{self.subject}: registry sent more than the {self.size} bytes its descriptor "
                f"declares (at least {new_total})",
                subject=self.subject,
                expected=str(self.size),
                actual=f">={new_total}",
                bytes_read=new_total,
            )
        self._hash.update(chunk)
        self.bytes_read = new_total

    def finish(self) -> Digest:
        if self.bytes_read != self.size:
            raise SizeMismatch(
                f"{self.subject}: expected {self.size} bytes, received {self.bytes_read}",
                subject=self.subject,
                expected=str(self.size),
                actual=str(self.bytes_read),
                bytes_read=self.bytes_read,
            )
        actual = Digest(self.digest.algorithm, self._hash.hexdigest())
        if actual != self.digest:
            raise DigestMismatch(
                f"{self.subject}: digest mismatch: expected {self.digest}, got {actual}",
                subject=self.subject,
                expected=str(self.digest),
                actual=str(actual),
                bytes_read=self.bytes_read,
            )
        return actual


class Inflater(Protocol):
    def feed(self, data: bytes | memoryview, out: Consumer) -> None: ...
    def finish(self) -> None: ...


class IdentityInflater:
    def feed(self, data: bytes | memoryview, out: Consumer) -> None:
        out(bytes(data))

    def finish(self) -> None:
        return None


class GzipInflater:
    """Multi-member gzip (RFC 1952 allows concatenation; pigz and some builders emit it).

    A stream must end exactly after a complete member: a truncated member, or anything but
    another member after one (trailing garbage, zero padding), is an error.
    """

    def __init__(self) -> None:
        self._member: igzip_lib.IgzipDecompressor | None = None
        self._pending = b""  # bytes after a member's end, before we know they start another
        self._members = 0

    def feed(self, data: bytes | memoryview, out: Consumer) -> None:
        data = bytes(data)
        while data or (self._member is not None and not self._member.needs_input):
            if self._member is None:
                data = self._pending + data
                self._pending = b""
                if len(data) < 2:
                    self._pending = data
                    return
                if data[:2] != _GZIP_MAGIC:
                    raise DecompressionError(
                        "gzip stream has trailing data that is not a gzip member"
                        if self._members
                        else "not a gzip stream (bad magic bytes)"
                    )
                self._member = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
            try:
                chunk = self._member.decompress(data, OUTPUT_CHUNK)
            except Exception as exc:  # isal's IsalError is typed as an instance, not a class
                raise DecompressionError(f"corrupt gzip stream: {exc}") from exc
            data = b""
            if chunk:
                out(chunk)
            if self._member.eof:
                data = self._member.unused_data
                self._member = None
                self._members += 1

    def finish(self) -> None:
        if self._member is not None:
            raise DecompressionError("gzip stream is truncated: its last member is incomplete")
        if self._pending:
            raise DecompressionError("gzip stream has trailing data that is not a gzip member")
        if self._members == 0:
            raise DecompressionError("gzip stream is empty")


class ZstdInflater:
    """One or more zstd frames (a skippable frame counts as one).

    Output per step is capped like gzip's: a block of zeros expands ~30000:1, so a quarter
    megabyte of input may hold gigabytes; nothing may decode a whole input chunk at once.
    """

    def __init__(self) -> None:
        self._frame: zstd.ZstdDecompressor | None = None
        self._frames = 0

    def feed(self, data: bytes | memoryview, out: Consumer) -> None:
        while data or (self._frame is not None and not self._frame.needs_input):
            if self._frame is None:
                self._frame = zstd.ZstdDecompressor()
            try:
                chunk = self._frame.decompress(data, OUTPUT_CHUNK)
            except zstd.ZstdError as exc:
                raise DecompressionError(f"corrupt zstd stream: {exc}") from exc
            data = b""
            if chunk:
                out(chunk)
            if self._frame.eof:
                data = self._frame.unused_data  # the start of the next frame, if any
                self._frame = None
                self._frames += 1

    def finish(self) -> None:
        if self._frame is not None:
            raise DecompressionError("zstd stream is truncated: its last frame is incomplete")
        if self._frames == 0:
            raise DecompressionError("zstd stream is empty")


def make_inflater(compression: Compression) -> Inflater:
    if compression is Compression.GZIP:
        return GzipInflater()
    if compression is Compression.ZSTD:
        return ZstdInflater()
    return IdentityInflater()


@dataclass(frozen=True, slots=True)
class LayerVerdict:
    """What one verified layer turned out to be."""

    digest: Digest
    diff_id: Digest
    compressed_size: int
    uncompressed_size: int


class LayerVerifier:
    """The whole check of one layer: blob digest and size, decompression, diff_id.

    ``on_uncompressed`` sees the tar stream as it is produced (for extraction); it must not
    keep the chunks: they are unverified until ``finish()`` returns.
    """

    def __init__(
        self,
        *,
        digest: Digest,
        size: int,
        compression: Compression,
        diff_id: Digest | None,
        subject: str,
        max_uncompressed: int | None = None,
        on_uncompressed: Consumer | None = None,
    ) -> None:
        self.subject = subject
        self.compression = compression
        self.expected_diff_id = diff_id
        self.max_uncompressed = max_uncompressed
        self._on_uncompressed = on_uncompressed
        self.blob = BlobVerifier(digest, size, subject)
        self._inflater = make_inflater(compression)
        self._diff_algorithm = diff_id.algorithm if diff_id else "sha256"
        self._diff_hash = hashlib.new(self._diff_algorithm)
        self.uncompressed_size = 0
        self._inflate_error: IntegrityError | None = None

    @property
    def bytes_read(self) -> int:
        return self.blob.bytes_read

    def feed(self, chunk: bytes | memoryview) -> None:
        self.update_blob(chunk)
        self.inflate(chunk, self.hash_uncompressed)

    # feed() in three stages with separate state, so a pipeline may run each in its own
    # thread (in this order per chunk): the blob digest, the inflate, the diff_id hash.

    def update_blob(self, chunk: bytes | memoryview) -> None:
        """Stage 1: digest and size of the bytes as sent."""
        self.blob.update(chunk)

    def inflate(self, chunk: bytes | memoryview, out: Consumer) -> None:
        """Stage 2: inflate, handing each uncompressed piece (counted, limited) to ``out``."""
        if self._inflate_error is not None:
            return
        try:
            self._inflater.feed(chunk, lambda data: out(self._count_uncompressed(data)))
        except DecompressionError as exc:
            # Keep hashing: finish() decides whether the bytes or the producer are at fault.
            self._inflate_error = exc

    def hash_uncompressed(self, data: bytes) -> None:
        """Stage 3: the diff_id hash, then the consumer of the tar stream."""
        self._diff_hash.update(data)
        if self._on_uncompressed is not None:
            self._on_uncompressed(data)

    def _count_uncompressed(self, data: bytes) -> bytes:
        self.uncompressed_size += len(data)
        if self.max_uncompressed is not None and self.uncompressed_size > self.max_uncompressed:
            raise LayerTooLarge(
                f"{self.subject}: uncompressed layer exceeds the limit of "
                f"{self.max_uncompressed} bytes (--max-layer-size)",
                subject=self.subject,
                expected=f"<={self.max_uncompressed}",
                actual=f">{self.max_uncompressed}",
                bytes_read=self.blob.bytes_read,
            )
        return data

    def finish(self) -> LayerVerdict:
        digest = self.blob.finish()
        if self._inflate_error is None:
            try:
                self._inflater.finish()
            except DecompressionError as exc:
                self._inflate_error = exc
        if self._inflate_error is not None:
            err = self._inflate_error
            raise DecompressionError(
                f"{self.subject}: {err.message} (blob digest {digest} is as declared)",
                subject=self.subject,
                expected=f"a complete {self.compression.value} stream",
                actual=err.message,
                bytes_read=self.blob.bytes_read,
            ) from err
        actual_diff = Digest(self._diff_algorithm, self._diff_hash.hexdigest())
        if self.expected_diff_id is not None and actual_diff != self.expected_diff_id:
            raise DiffIDMismatch(
                f"{self.subject}: uncompressed digest does not match the config's diff_id: "
                f"expected {self.expected_diff_id}, got {actual_diff}",
                subject=self.subject,
                expected=str(self.expected_diff_id),
                actual=str(actual_diff),
                bytes_read=self.blob.bytes_read,
            )
        return LayerVerdict(digest, actual_diff, self.blob.bytes_read, self.uncompressed_size)
