"""Per-integration rate limit: a sliding window per integration, shared by the worker process.

Every send waits for a slot before calling the provider, so one worker never exceeds an
integration's messages-per-second. Several workers each get the full rate; for a cluster-wide
ceiling run a dedicated task queue and set Temporal's `max_task_queue_activities_per_second`
(see docs/channels.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

# Added to every window. The limit is exact at the moment a call is released, but the vendor
# counts when the request reaches it, after `Delivery._begin` (a thread hop and a database
# transaction) and the network. Saturated, the window releases each call exactly one window
# after the call `size` before it, so any difference in those two calls' delays (a slower
# transaction, a new connection) puts `size + 1` calls in one of the vendor's windows: without
# a margin that happens to about every other call. 50 ms covers the spread of a busy worker's
# transaction and a stable network path (locally 4-7 ms), and a worker whose event loop waits
# for the GIL behind a batch's store threads: a trial's fan-out at 30/s saw one call 25-27 ms
# late and the next on time, 31 arrivals in 0.975-0.997 s, with the 20 ms margin of before. It
# costs at most 5% of the rate (windows are >= 1 s). Not a slow new connection (100+ ms with TLS
# to a distant vendor, once per connection): for a vendor that strict, set the limit a little
# below its own.
JITTER_MARGIN = 0.05


class SlidingWindow:
    """At most ceil(rate) releases in any ceil(rate)/rate seconds (plus `margin`).

    So never more than `rate` calls in a second for a whole rate, one call per 1/rate seconds
    below 1 (0.5/s: one per 2 s), 3 in any 1.2 s at 2.5/s (a second may then hold 3: at most
    2 in every second could not give 2.5/s over time). Unlike a token bucket (whose full bucket lets
    `rate` calls go at once and refills meanwhile: up to 2x `rate` in the second after an idle
    spell), it keeps the last ceil(rate) release times and lets a call go once the oldest of
    them is a window old."""

    def __init__(
        self,
        rate: float,
        *,
        margin: float = JITTER_MARGIN,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._margin = margin
        self._clock = clock
        self._sleep = sleep
        self._released: deque[float] = deque()
        # Waiters queue on the lock in arrival order (asyncio.Lock is FIFO, and a newcomer waits
        # behind a woken waiter); only its holder sleeps, until the oldest release leaves its window.
        self._lock = asyncio.Lock()
        self.retune(rate)

    def retune(self, rate: float) -> None:
        """Apply an edited limit to the calls already released and to the waiters."""
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = rate
        self.size = math.ceil(rate)
        self.window = self.size / rate + self._margin
        self._released = deque(self._released, maxlen=self.size)  # keeps the newest

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                released = self._released  # read again after a sleep: the limit may have been edited
                if len(released) < self.size:
                    break
                opens = released[0] + self.window
                if now >= opens:
                    break
                # A cancelled sleep leaves the log as it was and the lock to the next waiter.
                await self._sleep(opens - now)
            released.append(now)  # full: the deque drops the oldest


class RateLimiter:
    def __init__(self) -> None:
        self._windows: dict[str, SlidingWindow] = {}

    async def acquire(self, integration_id: str, per_second: float | None) -> None:
        if not per_second or per_second <= 0:
            return
        window = self._windows.get(integration_id)
        if window is None:
            window = self._windows[integration_id] = SlidingWindow(per_second)
        elif window.rate != per_second:
            # Edited in place (not replaced): the calls it released still count, and the waiters
            # already queued stay in the one queue with the new ones.
            window.retune(per_second)
        await window.acquire()
