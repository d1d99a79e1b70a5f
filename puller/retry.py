"""Retrying transient failures: capped exponential backoff with full jitter.

Layer: I/O only in that it sleeps. Only errors marked ``retryable`` are retried; integrity
errors never are, so a retry can never turn a wrong answer into a right one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from puller.errors import PullVerifyError, RegistryError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    base_delay: float = 0.25
    max_delay: float = 10.0
    total: float = 120.0  # give up once this much time has passed since the first try
    max_retry_after: float = 60.0  # a server asking for longer than this is not waited for

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(attempts=1)


class Attempts:
    """Counts tries of one operation; ``await wait(exc)`` sleeps or re-raises ``exc``."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        on_retry: Callable[[PullVerifyError, float], None] | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng
        self._start = clock()
        self.tries = 1
        self._on_retry = on_retry

    def delay_for(self, exc: PullVerifyError) -> float | None:
        """Seconds to wait before the next try, or None when we must give up."""
        policy = self.policy
        if not exc.retryable or self.tries >= policy.attempts:
            return None
        retry_after = exc.retry_after if isinstance(exc, RegistryError) else None
        if retry_after is not None:
            if retry_after > policy.max_retry_after:
                return None
            delay = retry_after
        else:
            ceiling = min(policy.max_delay, policy.base_delay * (2 ** (self.tries - 1)))
            delay = ceiling * self._rng()
        if self._clock() - self._start + delay > policy.total:
            return None
        return delay

    async def wait(self, exc: PullVerifyError) -> None:
        delay = self.delay_for(exc)
        if delay is None:
            raise exc
        if self._on_retry is not None:
            self._on_retry(exc, delay)
        self.tries += 1
        await anyio.sleep(delay)
