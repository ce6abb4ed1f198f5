"""Batched "dispatched" marks: a failed write keeps the marks for the next round, nothing is dropped."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from api.dispatch_marks import BATCH, DispatchMarks
from store.engine import Store
from store.tables import Event, Section, now_utc


def _event(store: Store, event_id: str) -> None:
    with store.session() as s:
        if s.get(Section, "sec_marks") is None:
            s.add(Section(id="sec_marks", name="marks", created_at=now_utc()))
            s.flush()
        s.add(Event(id=event_id, section_id="sec_marks", user_id="u", kind="custom", name="x", data={},
                    received_at=now_utc(), commands=[{"action": "trigger"}]))  # fmt: skip


def _dispatched(store: Store, event_id: str) -> bool:
    with store.session() as s:
        ev = s.get(Event, event_id)
        assert ev is not None
        return ev.dispatched


async def test_a_failed_flush_keeps_the_marks_and_the_next_one_writes_them(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'marks.db'}")
    _event(store, "evt_a")
    marks = DispatchMarks(store, interval=3600)  # no background round during the test
    marks.add(["evt_a"])
    with store.engine.begin() as conn:  # the table is briefly unusable
        conn.execute(text("ALTER TABLE event RENAME TO event_away"))
    with pytest.raises(OperationalError):
        await marks.flush()
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE event_away RENAME TO event"))
    assert not _dispatched(store, "evt_a")
    await marks.close()  # shutdown writes what is left
    assert _dispatched(store, "evt_a")


async def test_flush_waits_for_a_batch_the_background_round_is_writing(tmp_path: Path) -> None:
    """`flush()` returns only when every mark queued before it is written, including the batch the
    background round took a moment earlier (the load test read the table right after a flush)."""
    store = Store(f"sqlite:///{tmp_path / 'marks.db'}")
    ids = [f"evt_{i}" for i in range(BATCH)]  # one whole batch: the longest write
    for event_id in ids:
        _event(store, event_id)
    marks = DispatchMarks(store, interval=0)
    marks.add(ids)
    for _ in range(100):  # let the background round take the batch
        await asyncio.sleep(0)
        if not marks._ids:
            break
    assert not marks._ids, "the background round did not start"
    await marks.flush()
    # Read as another process would, without the write lock (which would wait for the writer).
    with sqlite3.connect(tmp_path / "marks.db") as reader:
        undispatched = reader.execute("SELECT count(*) FROM event WHERE NOT dispatched").fetchone()[0]
    assert undispatched == 0
    await marks.close()
