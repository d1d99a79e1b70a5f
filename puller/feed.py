"""Feed a layer's bytes from the event loop through worker threads.

Layer: I/O plumbing (threads, asyncio wake-ups). A layer is verified in one of two shapes:

    one thread:     event loop ──chunk──> [blob digest + size, inflate, diff_id hash]

    three threads:  event loop ──chunk──> [blob digest + size]
                               └─chunk──> [inflate] ──tar piece──> [diff_id hash]

While at least as many layers are being verified as there are cores, each layer keeps to one
thread: the cores are busy anyway, a tar piece is hashed while it is still in the CPU cache,
and nothing is handed between threads (hand-offs cost GIL and futex traffic: ~40% of the
system time of a 4-layer pull). With fewer layers than cores, a layer spreads over three
threads so that even a single-layer image keeps two cores busy (hashlib, isal and zstd
release the GIL). A layer starts in one thread and moves to three, once, as soon as the
other layers finish; the three threads wait for the first to finish its chunks, so every
stage still sees every chunk in order.

Memory is bounded: the loop waits when more than ``max_pending`` compressed bytes are
queued, and the inflate stage blocks when ``max_pieces`` tar pieces wait for the hash.
``close()`` lets every queued chunk be processed before it returns, so the verifier's
counts match the bytes received (a resume then starts at the right offset), and then
raises the first error a stage met.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

import anyio

from puller.verify import LayerVerifier

_STOP = b""  # never a real chunk: empty reads end the stream before they get here


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class Crowd:
    """How many layers are left to verify, shared by one puller's feeders."""

    def __init__(self, *, cores: int | None = None, jobs: int) -> None:
        self.cores = max(1, cores or usable_cores())
        self.jobs = max(1, jobs)
        self.unfinished = 0

    @property
    def crowded(self) -> bool:
        """Enough layers at once to keep every core busy with one thread each."""
        return min(self.unfinished, self.jobs) >= self.cores


class _Stage:
    """One thread applying ``work`` to every item of its queue; errors stop the work.

    ``after`` runs when the stage ends; ``first`` is the stage that handled the earlier
    chunks: this one waits for it to end, and does no work if it failed (its chunks would
    have a gap; the first error is the one ``close()`` raises).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[bytes], None],
        done: Callable[[int], None],
        inbox: queue.Queue[bytes] | queue.SimpleQueue[bytes],
        *,
        after: Callable[[], None] | None = None,
        first: _Stage | None = None,
    ) -> None:
        self.error: BaseException | None = None
        self.inbox = inbox
        self._work = work
        self._done = done
        self._after = after
        self._first = first
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            skip = False
            if self._first is not None:
                self._first.thread.join()
                skip = self._first.error is not None
            while (item := self.inbox.get()) is not _STOP:
                if self.error is None and not skip:
                    try:
                        self._work(item)
                    except BaseException as exc:  # handed to the event loop by close()
                        self.error = exc
                self._done(len(item))
        finally:
            if self._after is not None:
                self._after()


class ThreadedFeeder:
    """``await feed(chunk)`` many times, then ``await close()`` (or use ``async with``).

    Without a ``crowd`` the layer gets three threads from the start.
    """

    def __init__(
        self,
        verifier: LayerVerifier,
        *,
        name: str = "layer",
        crowd: Crowd | None = None,
        max_pending: int = 1 << 20,
        max_pieces: int = 4,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._verifier = verifier
        self._name = name
        self._crowd = crowd
        self._max_pending = max_pending
        self._max_pieces = max_pieces
        self._sent = 0
        self._done = [0, 0]  # bytes finished by the blob and the inflate work
        self._room: asyncio.Event | None = None
        self._stages: list[_Stage] = []
        self._inboxes: tuple[queue.SimpleQueue[bytes], ...] = ()
        self._split = False
        self._closed = False
        if crowd is not None and crowd.crowded:
            self._start_single()
        else:
            self._start_split()

    def _start_single(self) -> None:
        inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        stage = _Stage(f"{self._name}-verify", self._verifier.feed, self._finished(0, 1), inbox)
        self._begin([stage], (inbox,))

    def _start_split(self) -> None:
        first = self._stages[-1] if self._stages else None
        verifier = self._verifier
        pieces: queue.Queue[bytes] = queue.Queue(maxsize=self._max_pieces)
        hashing = _Stage(
            f"{self._name}-diff-id", verifier.hash_uncompressed, _ignore, pieces, first=first
        )

        def give_piece(data: bytes) -> None:
            if data and hashing.error is None:
                pieces.put(data)

        def inflate(chunk: bytes) -> None:
            verifier.inflate(chunk, give_piece)

        blob_inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        inflate_inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        blob = _Stage(
            f"{self._name}-digest", verifier.update_blob, self._finished(0), blob_inbox, first=first
        )
        inflating = _Stage(
            f"{self._name}-inflate",
            inflate,
            self._finished(1),
            inflate_inbox,
            after=lambda: pieces.put(_STOP),
            first=first,
        )
        self._split = True
        self._begin([blob, inflating, hashing], (blob_inbox, inflate_inbox))

    def _begin(self, stages: list[_Stage], inboxes: tuple[queue.SimpleQueue[bytes], ...]) -> None:
        for inbox in self._inboxes:
            inbox.put(_STOP)  # the stages before finish their chunks, then the new ones go on
        self._stages.extend(stages)
        self._inboxes = inboxes
        for stage in stages:
            stage.thread.start()

    def _finished(self, *indexes: int) -> Callable[[int], None]:
        def note(nbytes: int) -> None:
            with self._lock:
                for index in indexes:
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
        if not self._split and self._crowd is not None and not self._crowd.crowded:
            self._start_split()
        with self._lock:
            self._sent += len(chunk)
            for inbox in self._inboxes:
                inbox.put(chunk)
            room = None
            if self._pending() > self._max_pending:
                room = self._room = asyncio.Event()
        if room is not None:
            await room.wait()

    async def close(self) -> None:
        """Process everything queued, stop the threads, then raise a stage's error."""
        if not self._closed:
            self._closed = True
            for inbox in self._inboxes:
                inbox.put(_STOP)
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
