"""A batched run under transient provider faults: one recipient's 429/5xx defers that recipient
only (its own backoff), never fails the shard's `deliver_batch` activity (whose Temporal retries
compounded into minutes of idle shard); a vendor-wide 429 with Retry-After pauses its shard for
that long (a workflow timer), not longer."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import select
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from store.broadcasts import shard_of
from store.engine import Store
from store.tables import Send
from tests.audience.feed_helpers import batch_campaign, campaign_sends, provider_push, push_user, run_result
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Received, Reply
from workflows.ids import broadcast_workflow_id

TOKEN = re.compile(rb"tok-[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _token(req: Received) -> str:
    found = TOKEN.search(req.body)
    assert found is not None, req.body
    return found.group().decode()


async def _run(api: httpx.AsyncClient, sec: SectionKeys) -> tuple[str, str]:
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, sec, spec)
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=sec.mgmt)
    assert r.status_code == 202, r.text
    return cid, str(r.json()["id"])


def _batch_attempts(history: WorkflowHistory) -> list[int]:
    """The attempt number of every started `deliver_batch` activity (1 = it never failed)."""
    batches = {
        e.event_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "broadcast.deliver_batch"
    }
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and e.activity_task_started_event_attributes.scheduled_event_id in batches
    ]


async def test_a_recipient_fault_defers_that_recipient_not_the_batch(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    path = await provider_push(api, section, fresh_provider)
    for _ in range(12):
        await push_user(api, section, store)
    calls: dict[str, int] = {}
    faults = iter([Reply(503, {"error": "busy"}), Reply(500), Reply(429, {"error": "later"})])

    def answer(req: Received) -> Reply:
        token = _token(req)
        calls[token] = calls.get(token, 0) + 1
        if len(calls) % 4 == 1 and calls[token] == 1:  # every fourth recipient's first call faults
            return next(faults, Reply(200))
        return Reply(200)

    fresh_provider.handler(path, answer)
    cid, run_id = await _run(api, section)
    progress = await run_result(env.client, run_id, timeout=120)
    assert (progress.sent, progress.failed) == (12, 0), progress
    # The faulted recipients were called twice, everyone else once: none held back, none repeated.
    assert sorted(calls.values()) == [1] * 9 + [2] * 3, calls
    history = await env.client.get_workflow_handle(broadcast_workflow_id(run_id)).fetch_history()
    attempts = _batch_attempts(history)
    assert attempts and set(attempts) == {1}, attempts  # no batch failed: nothing retried by Temporal
    sends = await campaign_sends(store, cid)
    assert len(sends) == 12 and all(s.status == "accepted" and not s.possible_duplicate for s in sends)
    assert sorted(s.attempts for s in sends) == [1] * 9 + [2] * 3


async def test_a_vendor_429_with_retry_after_pauses_its_shard_for_that_long(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    path = await provider_push(api, section, fresh_provider)
    users = [await push_user(api, section, store) for _ in range(8)]
    while min(sum(shard_of(u, 2) == k for u in users) for k in (0, 1)) < 3:
        # Both shards need others than the throttled recipient: 8 random ids left one shard with a
        # single user about once in 64 runs (the check below found no other call of its shard).
        users.append(await push_user(api, section, store))
    throttled: list[str] = []

    def answer(req: Received) -> Reply:
        if not throttled:
            throttled.append(_token(req))
            return Reply(429, {"error": "slow down"}, headers={"Retry-After": "30"})
        return Reply(200)

    fresh_provider.handler(path, answer)
    cid, run_id = await _run(api, section)
    progress = await run_result(env.client, run_id, timeout=120)
    assert progress.sent == len(users), progress
    with store.session() as s:
        sends = list(s.exec(select(Send).where(Send.campaign_id == cid)).all())
    [first] = [x for x in sends if x.attempts == 2]  # the throttled recipient, sent on its retry
    shard = shard_of(first.user_id, 2)
    same_shard = [x for x in sends if shard_of(x.user_id, 2) == shard and x.key != first.key]
    assert same_shard and {x.user_id for x in sends} == set(users)
    # Its shard's other calls were made by batches starting at least the Retry-After later
    # (workflow time: a send's created_at is its batch's as_of), none in the throttled batch.
    assert all(x.created_at >= first.created_at + timedelta(seconds=30) for x in same_shard), (
        first.created_at, [x.created_at for x in same_shard],
    )
    history = await env.client.get_workflow_handle(broadcast_workflow_id(run_id)).fetch_history()
    assert set(_batch_attempts(history)) == {1}
