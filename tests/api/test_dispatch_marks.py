"""Batched "dispatched" marks: a failed write keeps the marks for the next round, nothing is dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from api.dispatch_marks import DispatchMarks
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
