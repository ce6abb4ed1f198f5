"""Mark dispatched events in batches: one UPDATE per interval instead of a transaction per request.

After a request's journey commands reach Temporal its events are marked dispatched, so the
sweeper (`redispatch_pending`) leaves them alone. That mark was the second write transaction of
every ingestion request; here the marks of all requests in an interval (0.1 s) share one
`UPDATE ... WHERE id IN (...)`. Nothing depends on the mark being immediate: the sweeper only
replays events unmarked for 10 seconds, and a replayed command is harmless to a running journey
(journeys ignore an event id they have seen). Marks still waiting when the process dies are the
same case as a crash between dispatch and mark: the sweeper replays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from store.engine import Store
from store.event_marks import mark_dispatched

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
BATCH = 500  # ids per UPDATE: well under every database's bound-parameter limit


class DispatchMarks:
    def __init__(self, store: Store, interval: float = FLUSH_SECONDS) -> None:
        self._store = store
        self._interval = interval
        self._ids: list[str] = []
        self._task: asyncio.Task[None] | None = None
        # One write at a time: `flush()` returns only when every mark queued before it is written,
        # including a batch the background round took a moment earlier.
        self._writing = asyncio.Lock()

    def add(self, event_ids: list[str]) -> None:
        """Queue marks; the flusher starts on first use in the running loop (tests run no lifespan)."""
        self._ids.extend(event_ids)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Write every queued mark now (shutdown, tests)."""
        async with self._writing:
            while self._ids:
                batch, self._ids = self._ids[:BATCH], self._ids[BATCH:]
                try:
                    await asyncio.to_thread(mark_dispatched, self._store, batch)
                except Exception:
                    self._ids[:0] = batch  # kept for the next round; the sweeper covers a long outage
                    raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        while self._ids:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:  # database briefly away: retry next round
                log.warning("marking %d events dispatched failed: %s", len(self._ids), exc)
