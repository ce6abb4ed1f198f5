"""Raw event retention: delete accepted events older than the configured retention.

Deletes in bounded batches (short transactions, no long lock on SQLite) and never deletes an
event still waiting for dispatch to Temporal, so retention cannot lose a journey command.
Run by `rejoin purge-events` (cron, or a Temporal Schedule calling the same function).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlmodel import col, select

from store.engine import Store
from store.tables import Event


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
