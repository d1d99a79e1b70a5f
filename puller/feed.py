"""Feed a layer's bytes from the event loop through three worker threads.

Layer: I/O plumbing (threads, asyncio wake-ups). The stages of ``LayerVerifier.feed`` run
concurrently, each in a thread of its own, chunk after chunk in order:

    event loop ──chunk──> [blob digest + size]
               └─chunk──> [inflate] ──tar piece──> [diff_id hash]

so even a single-layer image keeps two cores busy (hashlib, isal and zstandard release the
GIL), while the loop goes on reading the socket. Memory is bounded: the loop waits when
more than ``max_pending`` compressed bytes are queued, and the inflate stage blocks when
``max_pieces`` uncompressed pieces wait for the hash.

``close()`` lets every queued chunk be processed before it returns, so the verifier's
counts match the bytes received (a resume then starts at the right offset), and then
raises the first error a stage met.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

import anyio

from puller.verify import LayerVerifier

_STOP = b""  # never a real chunk: empty reads end the stream before they get here


class _Stage:
    """One thread applying ``work`` to every item of its queue; errors stop the work."""

    def __init__(
        self,
        name: str,
        work: Callable[[bytes], None],
        done: Callable[[int], None],
        inbox: queue.Queue[bytes] | queue.SimpleQueue[bytes],
        after: Callable[[], None] | None = None,
    ) -> None:
        self.error: BaseException | None = None
        self.inbox = inbox
        self._work = work
        self._done = done
        self._after = after
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            while (item := self.inbox.get()) is not _STOP:
                if self.error is None:
                    try:
                        self._work(item)
                    except BaseException as exc:  # handed to the event loop by close()
                        self.error = exc
                self._done(len(item))
        finally:
            if self._after is not None:
                self._after()


class ThreadedFeeder:
    """``await feed(chunk)`` many times, then ``await close()`` (or use ``async with``)."""

    def __init__(
        self,
        verifier: LayerVerifier,
        *,
        name: str = "layer",
        max_pending: int = 1 << 20,
        max_pieces: int = 4,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._max_pending = max_pending
        self._sent = 0
        self._done = [0, 0]  # bytes finished by the blob and the inflate stage
        self._room: asyncio.Event | None = None
        pieces: queue.Queue[bytes] = queue.Queue(maxsize=max_pieces)
        self._hash = _Stage(f"{name}-diff-id", verifier.hash_uncompressed, _ignore, pieces)
        self._blob = _Stage(
            f"{name}-digest", verifier.update_blob, self._finished(0), queue.SimpleQueue()
        )

        def inflate(chunk: bytes) -> None:
            verifier.inflate(chunk, self._give_piece)

        self._inflate = _Stage(
            f"{name}-inflate",
            inflate,
            self._finished(1),
            queue.SimpleQueue(),
            after=lambda: pieces.put(_STOP),
        )
        self._stages = (self._blob, self._inflate, self._hash)
        self._closed = False
        for stage in self._stages:
            stage.thread.start()

    def _give_piece(self, data: bytes) -> None:
        if data and self._hash.error is None:
            self._hash.inbox.put(data)

    def _finished(self, index: int) -> Callable[[int], None]:
        def note(nbytes: int) -> None:
            with self._lock:
                self._done[index] += nbytes
                room = self._room
                if room is not None and self._pending() <= self._max_pending // 2:
                    self._room = None
                    self._loop.call_soon_threadsafe(room.set)

        return note

    def _pending(self) -> int:
        return self._sent - min(self._done)

    def _raise_error(self) -> None:
        for stage in self._stages:
            if stage.error is not None:
                raise stage.error

    async def feed(self, chunk: bytes) -> None:
        """Queue ``chunk`` for the stages; wait while too much is queued already."""
        self._raise_error()
        if not chunk:
            return
        with self._lock:
            self._sent += len(chunk)
            self._blob.inbox.put(chunk)
            self._inflate.inbox.put(chunk)
            room = None
            if self._pending() > self._max_pending:
                room = self._room = asyncio.Event()
        if room is not None:
            await room.wait()

    async def close(self) -> None:
        """Process everything queued, stop the threads, then raise a stage's error."""
        if not self._closed:
            self._closed = True
            self._blob.inbox.put(_STOP)
            self._inflate.inbox.put(_STOP)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._join)
        self._raise_error()

    def _join(self) -> None:
        for stage in self._stages:
            stage.thread.join()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        # Already failing: drain so the verifier's counts are settled. A stage's integrity
        # error explains a network error that follows it, so it wins; cancellation always wins.
        try:
            await self.close()
        except Exception as stage_error:
            if stage_error is not exc and isinstance(exc, Exception):
                raise stage_error from exc


def _ignore(_nbytes: int) -> None:
    return None
