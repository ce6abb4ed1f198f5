"""Raw event retention: delete accepted events older than the configured retention.

Deletes in bounded batches (short transactions, no long lock on SQLite) and never deletes an
event still waiting for dispatch to Temporal, so retention cannot lose a journey command.
Runs hourly inside every API process (`retention_loop`, started by `create_app`'s lifespan when
`REJOIN_EVENT_RETENTION` is above zero) and on demand with `rejoin purge-events`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import col, select

from store.engine import Store
from store.tables import Event, now_utc

log = logging.getLogger(__name__)


def purge_events(store: Store, cutoff: datetime, *, batch: int = 5000) -> int:
    """Delete dispatched events received before `cutoff`; the number deleted."""
    total = 0
    while True:
        with store.session() as s:
            ids = s.exec(
                select(Event.id)
                .where(col(Event.received_at) < cutoff, Event.dispatched == True)  # noqa: E712
                .limit(batch)
            ).all()
            if not ids:
                return total
            s.exec(delete(Event).where(col(Event.id).in_(ids)))
            total += len(ids)


async def retention_loop(store: Store, retention: timedelta, every: timedelta = timedelta(hours=1)) -> None:
    """Purge expired events now and then every `every`, until cancelled (runs in each API process)."""
    while True:
        try:
            deleted = await asyncio.to_thread(purge_events, store, now_utc() - retention)
            if deleted:
                log.info("retention: deleted %d events older than %s", deleted, retention)
        except Exception as exc:  # the next round retries; never take the API down over retention
            log.warning("retention round failed: %s", exc)
        await asyncio.sleep(every.total_seconds())
