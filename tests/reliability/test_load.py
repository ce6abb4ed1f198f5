"""Bounded load on loopback: thousands of events through the real ASGI app, none lost, no 5xx."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Event
from tests.helpers import SectionKeys, add_integration, add_to_cart, app_state, cart_campaign, create_campaign, new_dyid

EVENTS = int(os.environ.get("REJOIN_LOAD_EVENTS", "5000"))  # raise for a longer soak
PER_REQUEST = 20
CONCURRENCY = 16
USERS = 50


@pytest.mark.slow  # ~11 s on 2 cores for 5,000 events
async def test_thousands_of_events_accepted_equals_stored_and_no_5xx(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """5,000 events (some re-triggering journeys) from 16 concurrent clients: every 202 is stored, no 5xx."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="P1D"))
    users = [new_dyid() for _ in range(USERS)]
    statuses: Counter[int] = Counter()
    accepted = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(EVENTS // PER_REQUEST):
        queue.put_nowait(i)

    async def client() -> None:
        nonlocal accepted
        while not queue.empty():
            i = queue.get_nowait()
            events = [{"name": "Viewed", "properties": {"n": j}} for j in range(PER_REQUEST - 1)]
            events.append(add_to_cart(f"sku-{i % 7}"))  # one trigger per request: signal-with-start
            body = {"user": {"dyid": users[i % USERS], "active_consent_accepted": True}, "events": events}
            r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
            statuses[r.status_code] += 1
            if r.status_code == 202:
                accepted += r.json()["accepted"]

    with env.with_time_skipping_disabled():  # journeys just wait; this measures ingestion
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses[202] == EVENTS // PER_REQUEST, statuses
    await app_state(api).dispatch_marks.flush()  # dispatch marks are written in batches
    with store.session() as s:
        stored = s.exec(select(func.count()).select_from(Event).where(Event.section_id == section.id)).one()
        pending = s.exec(
            select(func.count()).select_from(Event).where(Event.section_id == section.id, Event.dispatched == False)  # noqa: E712
        ).one()
    assert accepted == EVENTS == stored
    assert pending == 0  # every journey command reached Temporal
