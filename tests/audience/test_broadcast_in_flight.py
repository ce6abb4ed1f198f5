"""A batched recipient's send row goes in flight just before its call, not while it waits its turn.

A send row in flight whose worker dies is retried as a possible duplicate: its call may have been
made. A trial killed the worker of a run throttled to 30/s and found 60 sends flagged that had
reached the vendor once: each shard prepared its 2 x rate + 1 senders' recipients at once, then
let them wait up to 2 s for their throttle slots. Now a throttled recipient is prepared just
before its slot (`FanOut.before_turn`), and an unthrottled chunk is prepared for the senders
waiting for it, so none of its rows waits for a free sender. Checked at each call's arrival at the
local provider: the rows in flight are the calls being made and the few about to be. Real store
and local provider server; the activities are driven directly."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment

from activities import broadcast
from activities.broadcast import BroadcastActivities
from domain.caps import CapPolicy
from domain.tracking import Signer
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.engine import Store
from store.tables import Send
from tests.audience.feed_helpers import batch_campaign, driven_run, planned_batch, provider_push, push_user
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Received, Reply


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _in_flight(store: Store, cid: str) -> int:
    with store.session() as s:
        query = select(func.count()).where(col(Send.campaign_id) == cid, col(Send.status) == "in_flight")
        return int(s.exec(query).one())


async def _deliver(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, provider: ProviderServer,
    users: int, answer_after: float, throttle: float | None,
) -> tuple[list[int], int]:  # fmt: skip
    """Run one batch; the send rows in flight seen at each call's arrival, and the calls made."""
    path = await provider_push(api, section, provider)
    for _ in range(users):
        await push_user(api, section, store)
    extra = {"throttle_per_second": throttle} if throttle is not None else {}
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()},
                          **extra)  # fmt: skip
    cid = await create_campaign(api, section, spec)
    run = driven_run(store, section.id, cid)
    seen: list[int] = []

    def answer(_req: Received) -> Reply:
        seen.append(_in_flight(store, cid))
        return Reply(200, {"ok": True}, delay=answer_after)

    provider.handler(path, answer)
    async with outbound_session(limit=50, timeout=10, connect=5) as http:
        acts = BroadcastActivities(
            store, ProviderRegistry(store, http, allow_private_urls=True), SecretBox(settings.secret_keys),
            CapPolicy(5, timedelta(hours=24)), timedelta(hours=24),
            signer=Signer(settings.secret_keys), public_url="http://rejoin.test", concurrency=8,
        )  # fmt: skip
        req = await planned_batch(acts, run, users)
        result = await ActivityEnvironment().run(acts.deliver_batch, req)
    assert result.sent == users, result
    return seen, len(provider.to(path))


async def test_a_throttled_shard_puts_a_send_in_flight_just_before_its_slot(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    """Throttled to 8/s (a slot every 125 ms, 17 senders): before, the first call found ~8 rows in
    flight (every sender's recipient prepared at once, waiting for its slot); now the call being
    made, at most one that ended and the next one or two about to be made (prepared 250 ms ahead)."""
    seen, calls = await _deliver(api, section, store, settings, fresh_provider, 12, 0.0, throttle=8)
    assert calls == 12
    assert max(seen) <= 4, seen


async def test_an_unthrottled_chunk_is_prepared_for_the_senders_waiting_for_it(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    """8 senders against a vendor answering in 200 ms: the rows in flight never exceed the calls in
    progress (8), as none is prepared for a sender that is still busy."""
    seen, calls = await _deliver(api, section, store, settings, fresh_provider, 33, 0.2, throttle=None)
    assert calls == 33
    assert max(seen) <= 8, seen


async def test_a_slowly_throttled_batch_heartbeats_between_its_calls(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A shard throttled to one call every 2 s heartbeats between its calls, not only after each:
    the workflow's heartbeat timeout can then be short (a killed worker's batch retried after 20 s,
    not a minute) without timing out a batch that is only waiting for its next slot."""
    monkeypatch.setattr(broadcast, "HEARTBEAT_EVERY", timedelta(seconds=0.3))
    path = await provider_push(api, section, fresh_provider)
    for _ in range(3):
        await push_user(api, section, store)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()},
                          throttle_per_second=0.5)  # fmt: skip
    cid = await create_campaign(api, section, spec)
    run = driven_run(store, section.id, cid)
    beats: list[float] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *_: beats.append(time.monotonic())
    async with outbound_session(limit=50, timeout=10, connect=5) as http:
        acts = BroadcastActivities(
            store, ProviderRegistry(store, http, allow_private_urls=True), SecretBox(settings.secret_keys),
            CapPolicy(5, timedelta(hours=24)), timedelta(hours=24),
            signer=Signer(settings.secret_keys), public_url="http://rejoin.test",
        )  # fmt: skip
        req = await planned_batch(acts, run, 3)
        started = time.monotonic()
        result = await env.run(acts.deliver_batch, req)
        ended = time.monotonic()
    assert result.sent == 3 and len(fresh_provider.to(path)) == 3
    assert ended - started >= 3.5  # three calls 2 s apart
    gaps = [b - a for a, b in zip([started, *beats], [*beats, ended], strict=True)]
    assert max(gaps) < 1.0, gaps  # before: a heartbeat only after each call, ~2 s apart
