"""Where verified bytes go. The pipeline writes each blob as it streams, then commits it
only after ``LayerVerifier.finish()`` succeeds; until then it lives under a temporary name.

Layer: I/O (for sinks that write). ``DiscardSink`` keeps nothing: plain verification.
"""

from __future__ import annotations

from typing import Protocol

from puller.digest import Digest
from puller.manifest import Descriptor
from puller.verify import Consumer, LayerVerdict


class BlobWriter(Protocol):
    @property
    def on_uncompressed(self) -> Consumer | None:
        """Sees the layer's tar stream as the verifier inflates it (in a worker thread,
        in order), or None. One inflate serves both; the pieces are unverified until
        ``commit``."""

    async def write(self, chunk: bytes) -> None: ...
    async def restart(self) -> None:
        """Drop what was written: the server ignored a Range and sends the blob again."""

    async def commit(self, verdict: LayerVerdict) -> None:
        """Make the blob visible under its digest; called only after it verified."""

    async def abort(self) -> None:
        """Remove whatever was written; called on any failure or cancellation."""


class BlobSink(Protocol):
    async def has_verified(
        self, descriptor: Descriptor, diff_id: Digest | None
    ) -> LayerVerdict | None:
        """The verdict of a layer already stored and verified with this very diff_id, so it
        need not be fetched; None to fetch it. Matching the diff_id matters: another image
        may claim a different diff_id for the same blob, and that claim must be checked."""

    async def open_blob(self, descriptor: Descriptor) -> BlobWriter: ...
    async def put_verified(self, descriptor: Descriptor, data: bytes) -> None:
        """Store a small blob (manifest, config) already verified in memory."""

    async def finish_image(self, reference: str, manifest: Descriptor) -> None:
        """Record a fully verified image (tag it, write index.json); never for a failed one."""


class _NullWriter:
    on_uncompressed: Consumer | None = None

    async def write(self, chunk: bytes) -> None:
        return None

    async def restart(self) -> None:
        return None

    async def commit(self, verdict: LayerVerdict) -> None:
        return None

    async def abort(self) -> None:
        return None


class DiscardSink:
    """Verify only; write nothing."""

    async def has_verified(
        self, descriptor: Descriptor, diff_id: Digest | None
    ) -> LayerVerdict | None:
        return None

    async def open_blob(self, descriptor: Descriptor) -> BlobWriter:
        return _NullWriter()

    async def put_verified(self, descriptor: Descriptor, data: bytes) -> None:
        return None

    async def finish_image(self, reference: str, manifest: Descriptor) -> None:
        return None
