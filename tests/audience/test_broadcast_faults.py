"""Batched runs under provider faults and campaign changes: a recipient the vendor keeps refusing
is retried on its own and given up within its budget while the rest of its shard goes out; a
retry after a definite answer is no possible duplicate; pausing a campaign stops its running
run; runs sharing an integration share its rate limit."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from activities import broadcast as broadcast_activities
from store.broadcast_tables import BroadcastRecipient
from store.engine import Store
from store.tables import Campaign, CapReservation, OptIn
from tests.audience.feed_helpers import batch_campaign, campaign_sends, provider_push, push_user, run_result
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Received, Reply

TOKEN = re.compile(rb"tok-[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _scheduled_push(api: httpx.AsyncClient, sec: SectionKeys) -> str:
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    return await create_campaign(api, sec, spec)


async def _start_run(api: httpx.AsyncClient, sec: SectionKeys, cid: str) -> str:
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=sec.mgmt)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _token(req: Received) -> str:
    found = TOKEN.search(req.body)
    assert found is not None, req.body
    return found.group().decode()


async def test_a_refused_recipient_does_not_hold_up_its_shard_and_is_given_up(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its retries back off 2, 4, 8 ... s of (skipped) run time: a 2-minute budget is 6 or 7 calls.
    monkeypatch.setattr(broadcast_activities, "RECIPIENT_RETRY_BUDGET", timedelta(minutes=2))
    path = await provider_push(api, section, fresh_provider)
    for _ in range(6):
        await push_user(api, section, store)
    refused: list[str] = []  # the first recipient called: answered 500 for ever

    def answer(req: Received) -> Reply:
        token = _token(req)
        if not refused:
            refused.append(token)
        return Reply(500, {"error": "mailbox unavailable"}) if token == refused[0] else Reply(200)

    fresh_provider.handler(path, answer)
    cid = await _scheduled_push(api, section)
    progress = await run_result(env.client, await _start_run(api, section, cid), timeout=120)
    assert (progress.sent, progress.failed) == (5, 1), progress
    calls = [_token(r) for r in fresh_provider.to(path)]
    others = [t for t in calls if t != refused[0]]
    assert len(others) == 5 and len(set(others)) == 5  # each once, none held back
    # Retried with backoff over its budget, not in a storm, and not for ever.
    assert 4 <= calls.count(refused[0]) <= 10, calls.count(refused[0])
    sends = await campaign_sends(store, cid)
    [bad] = [s for s in sends if s.status != "accepted"]
    assert bad.status == "failed" and bad.provider_status == 500 and "gave up after" in (bad.provider_response or "")
    assert not any(s.possible_duplicate for s in sends)  # every answer was definite
    with store.session() as s:
        slot = s.get(CapReservation, bad.key)
        assert slot is not None and slot.released


async def test_a_retried_recipient_later_skipped_closes_its_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    """Answered 429, then opted out before its retry: skipped, and the send it began is failed with
    its last answer and its slot given back, not left in flight."""
    path = await provider_push(api, section, fresh_provider)
    await push_user(api, section, store)

    def opt_out_then_throttle(req: Received) -> Reply:
        with store.session() as s:  # the user opts out while the vendor throttles
            for row in s.exec(select(OptIn).where(OptIn.section_id == section.id)).all():
                row.opted_in = False
                s.add(row)
        return Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"})

    fresh_provider.handler(path, opt_out_then_throttle)
    cid = await _scheduled_push(api, section)
    progress = await run_result(env.client, await _start_run(api, section, cid))
    assert (progress.sent, progress.skipped, len(fresh_provider.to(path))) == (0, 1, 1), progress
    [send] = await campaign_sends(store, cid)
    assert send.status == "failed" and not send.possible_duplicate, send
    answer = send.provider_response or ""
    assert "not retried: not_opted_in" in answer and "slow down" in answer, answer
    with store.session() as s:
        slot = s.get(CapReservation, send.key)
        assert slot is not None and slot.released


async def test_pausing_a_campaign_stops_its_running_run(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    path = await provider_push(api, section, fresh_provider)
    for _ in range(8):
        await push_user(api, section, store)
    cid = await _scheduled_push(api, section)

    def pause_then_answer(req: Received) -> Reply:
        with store.session() as s:  # as POST /pause does to the row, while the run sends
            campaign = s.get(Campaign, cid)
            assert campaign is not None
            campaign.status = "paused"
            s.add(campaign)
        return Reply(200)

    fresh_provider.handler(path, pause_then_answer)
    progress = await run_result(env.client, await _start_run(api, section, cid))
    calls = len(fresh_provider.to(path))
    assert calls <= 2 and progress.sent == calls, progress  # at most the call each shard had begun
    assert progress.skipped == 8 - calls, progress
    with store.session() as s:
        reasons = {r.reason for r in s.exec(select(BroadcastRecipient)).all() if r.status == "skipped"}
    assert "campaign_paused" in reasons


async def test_runs_sharing_an_integration_share_its_rate_limit(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    """Two runs at once on an integration limited to 2 calls/s: 6 calls take at least ~2 s (a burst
    of 2, then 2/s), where each run keeping only to its own 2/s took ~1 s."""
    await provider_push(api, section, fresh_provider, rate_limit_per_second=2)
    for _ in range(3):
        await push_user(api, section, store)
    first, second = await _scheduled_push(api, section), await _scheduled_push(api, section)
    stamps: list[float] = []
    fresh_provider.on_request = lambda _: stamps.append(time.monotonic())
    try:
        runs = [await _start_run(api, section, first), await _start_run(api, section, second)]
        results: list[Any] = [await run_result(env.client, run) for run in runs]
    finally:
        fresh_provider.on_request = None
    assert [r.sent for r in results] == [3, 3]
    assert max(stamps) - min(stamps) >= 1.7, stamps
