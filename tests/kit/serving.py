"""What the kit's servers share: stopping at the end of a ``with`` block, and an event
loop of their own in a daemon thread for the in-process aiohttp servers.

Layer: test kit (threads, loopback network).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

START_TIMEOUT = 10.0


class Stoppable:
    """A server that is stopped when its ``with`` block ends, however it ends."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LoopThread:
    """Runs ``serve()`` on a fresh event loop in a daemon thread, keeps the loop running
    until ``stop()``, then runs ``shutdown()`` there. A failing ``serve`` fails ``start``."""

    def __init__(
        self,
        name: str,
        serve: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self._serve = serve
        self._shutdown = shutdown
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self.loop = loop
        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError(f"{self.name} did not start")
        if failure:
            raise RuntimeError(f"{self.name} did not start: {failure[0]!r}") from failure[0]

    def stop(self, first: Callable[[], None] | None = None) -> None:
        """Stop the loop (after ``first``, run on it) and wait for the shutdown."""
        loop, thread = self.loop, self._thread
        self.loop = self._thread = None
        if loop is None or thread is None:
            return
        if first is not None:
            loop.call_soon_threadsafe(first)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
