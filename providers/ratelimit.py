"""Per-integration rate limit: a token bucket per integration, shared by the worker process.

Every send waits for a token before calling the provider, so one worker never exceeds an
integration's messages-per-second. Several workers each get the full rate; for a cluster-wide
ceiling run a dedicated task queue and set Temporal's `max_task_queue_activities_per_second`
(see docs/channels.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self._clock = clock
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        # The lock queues waiters in arrival order, so a blast drains at exactly `rate`.
        async with self._lock:
            while True:
                now = self._clock()
                self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    async def acquire(self, integration_id: str, per_second: float | None) -> None:
        if not per_second or per_second <= 0:
            return
        bucket = self._buckets.get(integration_id)
        if bucket is None or bucket.rate != per_second:  # created, or the limit was edited
            bucket = self._buckets[integration_id] = TokenBucket(per_second)
        await bucket.acquire()
