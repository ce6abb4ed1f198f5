"""Whether an event's journey commands reached Temporal (read by the sweeper)."""

from __future__ import annotations

from sqlalchemy import bindparam, update

from store.engine import Store
from store.statements import table_of
from store.tables import Event

EVENTS = table_of(Event)
# Built once: composing an UPDATE over hundreds of ids per call was a visible share of the API's CPU.
_MARK = (
    update(EVENTS)
    .where(EVENTS.c.id.in_(bindparam("ids", expanding=True)))
    .values(dispatched=bindparam("dispatched"), deferred=bindparam("deferred"))
)


def mark_dispatched(store: Store, event_ids: list[str], *, dispatched: bool = True) -> None:
    """Record the dispatch outcome; `dispatched=False` hands the events to the sweeper."""
    with store.session() as s:  # one UPDATE for a whole batch (api/dispatch_marks.py)
        s.connection().execute(_MARK, {"ids": event_ids, "dispatched": dispatched, "deferred": not dispatched})
