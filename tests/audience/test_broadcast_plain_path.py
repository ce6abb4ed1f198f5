"""A batch's plain recipients are prepared in chunks and their acceptances recorded together
(activities/broadcast_plain.py): a few statements per chunk, not ~20 per recipient (benchmark 3's
fan-out was bound by them). What the chunks write must be what one recipient at a time wrote: the
same sends, recipients, journeys, cap slots and report counters (checked against a rebuild of the
counters from the raw rows). Real store and local provider server; the activities are driven
directly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy import select as core_select
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment

from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store import report_rollup
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.engine import Store
from store.report_tables import ReportCohort, ReportRollup
from store.statements import table_of
from store.tables import CapReservation, Journey, Send
from tests.audience.feed_helpers import planned_batch
from tests.audience.test_broadcast_exactly_once import _activities, _push_run
from tests.helpers import SectionKeys
from tests.provider_server import ProviderServer

RECIPIENTS = 24
ROLLUP, COHORT = table_of(ReportRollup), table_of(ReportCohort)


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every statement sent meanwhile (an executemany counts once), on any engine."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def _counters(store: Store, cid: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with store.session() as s:
        rollup = s.execute(core_select(ROLLUP).where(ROLLUP.c.campaign_id == cid)).all()
        cohorts = s.execute(core_select(COHORT).where(COHORT.c.campaign_id == cid)).all()
    return sorted(tuple(r) for r in rollup), sorted(tuple(r) for r in cohorts)


async def test_plain_recipients_are_prepared_and_recorded_in_chunks_as_one_at_a_time_would(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    cid, run, people = await _push_run(api, section, store, fresh_provider, RECIPIENTS)
    box = SecretBox(settings.secret_keys)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        acts = _activities(store, ProviderRegistry(store, http, allow_private_urls=True), box, settings)
        req = await planned_batch(acts, run, RECIPIENTS)
        with caplog.at_level(logging.WARNING, logger="activities.broadcast"), statements() as sent:
            result = await ActivityEnvironment().run(acts.deliver_batch, req)
    assert (result.processed, result.sent) == (RECIPIENTS, RECIPIENTS), result
    keys = [r.headers["idempotency-key"] for r in fresh_provider.requests]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == RECIPIENTS
    # Neither chunk step fell back to one recipient at a time (it would, silently but for this log).
    assert not [r for r in caplog.records if "one by one" in r.getMessage()], caplog.text
    # Before: ~20 statements per recipient (two transactions of reads and writes each), a send row
    # inserted per recipient. Now a chunk's reads and writes are one statement each: the first
    # recipient alone, then a chunk for the senders waiting (all 8 at once, mostly: their calls and
    # records end together). Acceptances are recorded in groups of those that came in while the
    # previous group was written: their size depends on timing, one at worst (~7 statements each).
    send_rows = [x for x in sent if x.startswith("INSERT INTO send ")]
    assert len(send_rows) <= RECIPIENTS // 3, len(send_rows)
    work = [x for x in sent if not x.startswith("BEGIN")]  # SQLite's `BEGIN IMMEDIATE` of each transaction
    assert len(work) <= 10 * RECIPIENTS, f"{len(work)} statements for {RECIPIENTS} recipients"

    with store.session() as s:
        run_row = s.get(BroadcastRun, run.id)
        assert run_row is not None and run_row.sent == RECIPIENTS
        recipients = s.exec(select(BroadcastRecipient).where(col(BroadcastRecipient.run_id) == run.id)).all()
        assert {(r.status, r.channel) for r in recipients} == {("sent", "app_push")}
        assert all(r.provider_response for r in recipients)
        sends = s.exec(select(Send).where(col(Send.campaign_id) == cid)).all()
        assert len(sends) == RECIPIENTS
        assert {(x.status, x.attempts, x.possible_duplicate, x.message_enc) for x in sends} == {
            ("accepted", 1, False, None)
        }
        journeys = s.exec(select(Journey).where(col(Journey.campaign_id) == cid)).all()
        assert sorted(j.user_id for j in journeys) == sorted(people)
        assert all(j.status == "completed" and j.last_sent_at is not None for j in journeys)
        slots = s.exec(select(CapReservation).where(col(CapReservation.campaign_id) == cid)).all()
        assert len(slots) == RECIPIENTS and not any(r.released for r in slots)
    live = _counters(store, cid)
    assert live[0] and len(live[1]) == RECIPIENTS
    with store.session() as s:
        report_rollup.rebuild(s, [cid])
    assert _counters(store, cid) == live  # what the chunks counted is what the raw rows say
