"""A pause signalled to a batched run survives the run's continue-as-new (workflows/broadcast.py
`campaign_stopped`, BroadcastInput.campaign_stopped): the next run ends unsent too, even once the
campaign is active again. A trial found the flag lived only in the workflow object: a pause arriving
as the run's history asked for a continue-as-new was lost, and an activation soon after sent the
rest. Real Temporal (the test server suggests a continue-as-new at 200 events), store and local
provider server."""

from __future__ import annotations

import asyncio
import secrets
import threading
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import select
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.engine import Store
from tests.audience.feed_helpers import batch_campaign, provider_push, push_user
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Received, Reply
from workflows.broadcast import BroadcastWorkflow
from workflows.feed_models import BroadcastInput
from workflows.ids import broadcast_workflow_id


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


# The test server suggests a continue-as-new once a history holds 200 events (tests/conftest.py). A
# batch adds 6 (activity scheduled, started, completed; a workflow task); the pause's signal adds 4.
# Paused while the batch scheduled at event 194-199 is in flight: its completion's workflow task is
# the first to see the suggestion (the one before saw at most 197), together with the signal.
PAUSE_FROM_EVENT = 194


async def test_a_pause_signalled_as_the_run_continues_as_new_still_ends_it(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """One shard, one recipient a batch: the campaign is paused (then activated at once) during the batch
    whose end makes the run continue as new. The next run skips everyone left (`campaign_paused`)."""
    path = await provider_push(api, section, fresh_provider)
    n = 45
    for _ in range(n):
        await push_user(api, section, store)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    arrived, go = threading.Semaphore(0), threading.Semaphore(0)
    holding = [True]

    def answer(_req: Received) -> Reply:
        if holding[0]:
            arrived.release()
            go.acquire(timeout=30)
        return Reply(200)

    fresh_provider.handler(path, answer)
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
        reason="test", state="waiting", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    inp = BroadcastInput(
        run_id=run.id, section_id=section.id, campaign_id=cid, shards=1, batch_size=1, plan_scheduled=True
    )
    handle = await env.client.start_workflow(
        BroadcastWorkflow.run, inp, id=broadcast_workflow_id(run.id), task_queue=settings.task_queue
    )
    first = env.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    try:
        while True:
            assert await asyncio.to_thread(arrived.acquire, True, 60), "no provider call"
            events = [e async for e in first.fetch_history_events()]
            if len(events) >= PAUSE_FROM_EVENT:
                assert len(events) < 200, len(events)
                r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
                assert r.status_code == 200, r.text
                r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
                assert r.status_code == 200, r.text
                holding[0] = False
                go.release()
                break
            go.release()
        progress = await asyncio.wait_for(handle.result(), 120)
    finally:
        holding[0] = False
        go.release()
    kinds = [e.event_type async for e in first.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED in kinds
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW, kinds[-5:]
    calls = len(fresh_provider.to(path))
    assert calls < n and (progress.sent, progress.skipped, progress.failed) == (calls, n - calls, 0), (
        calls, progress,
    )  # fmt: skip
    with store.session() as s:
        recipients = list(s.exec(select(BroadcastRecipient).where(BroadcastRecipient.run_id == run.id)).all())
        row = s.get(BroadcastRun, run.id)
    assert row is not None and row.state == "done" and (row.sent, row.skipped) == (calls, n - calls)
    assert {r.reason for r in recipients if r.status == "skipped"} == {"campaign_paused"}
