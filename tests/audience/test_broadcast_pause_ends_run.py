"""A campaign paused (or archived) while its batched run sends ends the run at once: the recipients not
yet sent are skipped (`campaign_paused`) without waiting for the throttle's slots, and an activation
soon after does not resume it (docs/campaigns.md "Pausing and archiving", docs/audience.md). A trial
at 5/s on 3000 users: paused at 42 sent, the run went on skipping 5 a second, and sent again once
the campaign was activated 25 s later. Real Temporal, store and local provider server."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.engine import Store
from store.tables import Campaign
from tests.audience.feed_helpers import batch_campaign, provider_push, push_user
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Received, Reply
from workflows.broadcast import BroadcastWorkflow
from workflows.feed_models import BroadcastInput
from workflows.ids import broadcast_workflow_id


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _set_status(store: Store, cid: str, status: str) -> None:
    with store.session() as s:  # as POST /pause and /activate do to the row
        campaign = s.get(Campaign, cid)
        assert campaign is not None
        campaign.status = status
        s.add(campaign)


async def test_a_throttled_run_paused_ends_at_once_and_activation_does_not_resume_it(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """2 calls/s on one shard, 24 recipients: the campaign is paused as the 3rd call arrives and activated
    again 1.5 s later. The run ends with the rest skipped before the activation, and sends nobody else."""
    path = await provider_push(api, section, fresh_provider)
    n = 24
    for _ in range(n):
        await push_user(api, section, store)
    spec = batch_campaign(
        "scheduled", channels=("app_push",), throttle_per_second=2,
        schedule={"send_at": datetime.now(UTC).isoformat()},
    )  # fmt: skip
    cid = await create_campaign(api, section, spec)
    paused_at: list[float] = []
    timers: list[threading.Timer] = []

    def answer(_req: Received) -> Reply:
        if len(fresh_provider.to(path)) == 3 and not paused_at:
            _set_status(store, cid, "paused")
            paused_at.append(time.monotonic())
            timers.append(threading.Timer(1.5, _set_status, (store, cid, "active")))
            timers[0].start()
        return Reply(200)

    fresh_provider.handler(path, answer)
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
        reason="test", state="waiting", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1, plan_scheduled=True)
    handle = await env.client.start_workflow(
        BroadcastWorkflow.run, inp, id=broadcast_workflow_id(run.id), task_queue=settings.task_queue
    )
    try:
        progress = await asyncio.wait_for(handle.result(), 120)
        ended = time.monotonic()
        await asyncio.sleep(2.0)  # the activation came meanwhile
    finally:
        for timer in timers:
            timer.join()
    calls = len(fresh_provider.to(path))
    assert paused_at and 3 <= calls <= 4, calls  # the calls begun when it paused, no more
    assert ended - paused_at[0] < 1.5, ended - paused_at[0]  # before the activation: no slot waited for
    assert (progress.sent, progress.skipped, progress.failed) == (calls, n - calls, 0), progress
    with store.session() as s:
        recipients = list(s.exec(select(BroadcastRecipient).where(BroadcastRecipient.run_id == run.id)).all())
        row = s.get(BroadcastRun, run.id)
        assert row is not None and row.state == "done" and (row.sent, row.skipped) == (calls, n - calls)
    assert {r.reason for r in recipients if r.status == "skipped"} == {"campaign_paused"}
    assert sum(r.status == "pending" for r in recipients) == 0


async def test_a_pause_wakes_a_shard_sleeping_out_a_retry_after_and_activation_does_not_resume_it(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """The vendor's first answer is a 429 with a Retry-After of an hour: the shard sleeps on a timer, the
    run `waiting`. POST /pause (then /activate at once) wakes it and ends the run, not an hour later,
    with every recipient skipped: the activation does not resume it (before, the timer's end found the
    campaign active and sent everyone)."""
    path = await provider_push(api, section, fresh_provider)
    n = 6
    for _ in range(n):
        await push_user(api, section, store)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    fresh_provider.handler(path, lambda _req: Reply(429, {"error": "slow down"}, headers={"Retry-After": "3600"}))
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
        reason="test", state="waiting", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1, plan_scheduled=True)
    handle = await env.client.start_workflow(
        BroadcastWorkflow.run, inp, id=broadcast_workflow_id(run.id), task_queue=settings.task_queue
    )
    for _ in range(300):  # the shard sleeps out the Retry-After
        with store.session() as s:
            row = s.get(BroadcastRun, run.id)
            if row is not None and row.state == "waiting" and row.total == n:
                break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the run never waited")
    assert len(fresh_provider.to(path)) == 1  # the probe alone
    r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
    assert r.status_code == 200 and "does not resume on activate" in " ".join(r.json()["warnings"]), r.text
    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert r.status_code == 200, r.text
    progress = await asyncio.wait_for(handle.result(), 60)
    assert (progress.sent, progress.skipped, progress.failed) == (0, n, 0), progress
    assert len(fresh_provider.to(path)) == 1
    with store.session() as s:
        row = s.get(BroadcastRun, run.id)
        recipients = list(s.exec(select(BroadcastRecipient).where(BroadcastRecipient.run_id == run.id)).all())
    assert row is not None and row.state == "done"
    # Woken by the pause: the shard's timer was cancelled, not fired. (The test server skips idle
    # workflow time, so the hour's end is no wall-clock measure here.)
    kinds = [event.WhichOneof("attributes") async for event in handle.fetch_history_events()]
    assert "timer_canceled_event_attributes" in kinds and "timer_fired_event_attributes" not in kinds, kinds
    assert {r.reason for r in recipients} == {"campaign_paused"}, [r.reason for r in recipients]


HISTORIES = Path(__file__).resolve().parent / "broadcast_histories"


@pytest.mark.skipif(
    os.environ.get("REJOIN_RECORD_HISTORIES") != "1", reason="records a history (REJOIN_RECORD_HISTORIES=1)"
)
async def test_record_campaign_stopped_history(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """A run sleeping out a vendor's Retry-After, signalled `campaign_stopped` by a pause, then activated:
    `campaign_stopped_woken.json` recorded with patch "broadcast-campaign-stopped" (woken, all
    skipped); `campaign_stopped_ignored.json` by a worker before it (REJOIN_BROADCAST_HISTORY=
    campaign_stopped_ignored: the signal ignored, the timer's end sends everyone). Both replay
    (tests/audience/test_broadcast_replay.py)."""
    name = os.environ.get("REJOIN_BROADCAST_HISTORY", "campaign_stopped_woken")
    target = HISTORIES / f"{name}.json"
    assert not target.exists(), f"{target} is recorded already (histories are append-only)"
    path = await provider_push(api, section, fresh_provider)
    for _ in range(3):
        await push_user(api, section, store)
    throttled: list[bool] = []

    def answer(_req: Received) -> Reply:
        if not throttled:
            throttled.append(True)
            return Reply(429, {"error": "slow down"}, headers={"Retry-After": "3600"})
        return Reply(200)

    fresh_provider.handler(path, answer)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
        reason="test", state="waiting", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1, plan_scheduled=True)
    handle = await env.client.start_workflow(
        BroadcastWorkflow.run, inp, id=broadcast_workflow_id(run.id), task_queue=settings.task_queue
    )
    for _ in range(300):
        with store.session() as s:
            row = s.get(BroadcastRun, run.id)
            if row is not None and row.state == "waiting" and row.total == 3:
                break
        await asyncio.sleep(0.1)
    await handle.signal("campaign_stopped", "campaign_paused")  # as POST /pause does
    await asyncio.sleep(1.0)
    progress = await asyncio.wait_for(handle.result(), 60)
    history = await handle.fetch_history()
    target.write_text(history.to_json())
    print(name, progress)
