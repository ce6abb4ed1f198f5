"""How many shards a batched run has: `REJOIN_BROADCAST_SHARDS` for new runs (default 2).

Every way a run is created takes the count from the API process's settings: a scheduled run
started by hand, a recurring campaign's Temporal Schedule (its fire input), a feed sync (its
input, passed on to the runs it triggers). Runs go through the real API, Temporal, store and
local provider; the count is read back from the recipients' shard column and from the
`deliver_batch` activities in the run's workflow history.

`feed_sync_histories/*.json` were recorded on the code before the feed sync's input carried the
count (`REJOIN_RECORD_HISTORIES=1 pytest tests/audience/test_broadcast_shard_count.py -k record`;
append-only): a sync in flight during the upgrade must replay.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlmodel import select
from temporalio.client import ScheduleBackfill, ScheduleOverlapPolicy, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from api.main import create_app
from settings import Settings
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.broadcasts import shard_of
from store.engine import Store
from tests.audience.feed_helpers import (
    batch_campaign,
    campaign_sends,
    create_feed,
    csv_bytes,
    provider_push,
    push_user,
    run_result,
    upload_feed,
)
from tests.helpers import (
    SectionKeys,
    add_integration,
    create_campaign,
    eventually,
    make_section,
    reachable_user,
    start_worker_with,
)  # fmt: skip
from tests.provider_server import ProviderServer
from workflows.feeds import FeedSyncWorkflow
from workflows.ids import broadcast_workflow_id, campaign_schedule_id

HISTORIES = Path(__file__).resolve().parent / "feed_sync_histories"
RECORDING = os.environ.get("REJOIN_RECORD_HISTORIES") == "1"


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


@asynccontextmanager
async def _api_with(
    settings: Settings, store: Store, env: WorkflowEnvironment, **changes: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An API process configured with `changes` (the session's worker runs the workflows)."""
    app = create_app(settings.model_copy(update=changes), store=store, temporal=env.client)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test", timeout=60) as client:
        yield client


async def _batches(env: WorkflowEnvironment, run_id: str) -> list[dict[str, Any]]:
    """The `BatchRequest` of every `deliver_batch` activity the run's workflow scheduled."""
    history = await env.client.get_workflow_handle(broadcast_workflow_id(run_id)).fetch_history()
    out = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "broadcast.deliver_batch":
                out.append(dict(json.loads(attrs.input.payloads[0].data)))
    return out


def _recipient_shards(store: Store, run_id: str) -> dict[str, int]:
    with store.session() as s:
        rows = s.exec(select(BroadcastRecipient).where(BroadcastRecipient.run_id == run_id)).all()
        return {r.user_id: r.shard for r in rows}


async def _assert_sharded(
    env: WorkflowEnvironment, store: Store, run_id: str, cid: str, users: list[str], shards: int
) -> None:
    """The run's recipients are spread over shards 0..shards-1 as `shard_of` places them, one
    `deliver_batch` loop per shard asks for that count, and every user got exactly one send."""
    assert (await run_result(env.client, run_id)).sent == len(users)
    placed = _recipient_shards(store, run_id)
    assert placed == {u: shard_of(u, shards) for u in users}, placed
    assert len(set(placed.values())) > 2, placed  # 24 users over 4 shards: never two shards only
    batches = await _batches(env, run_id)
    assert {b["shards"] for b in batches} == {shards}, batches
    assert {b["shard"] for b in batches} == set(range(shards)), batches
    sends = await campaign_sends(store, cid)
    assert sorted(s.user_id for s in sends) == sorted(users), sends


async def test_a_run_started_by_hand_has_the_configured_shards(
    api: httpx.AsyncClient, env: WorkflowEnvironment, settings: Settings, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """REJOIN_BROADCAST_SHARDS=4: a scheduled push run started by hand delivers over 4 shards,
    each recipient once."""
    async with _api_with(settings, store, env, broadcast_shards=4) as api4:
        sec = await make_section(api4)
        path = await provider_push(api4, sec, fresh_provider)
        users = [await push_user(api4, sec, store) for _ in range(24)]
        spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
        cid = await create_campaign(api4, sec, spec)
        r = await api4.post(f"/api/v1/campaigns/{cid}/runs", headers=sec.mgmt)
        assert r.status_code == 202, r.text
        run_id = str(r.json()["id"])
    await _assert_sharded(env, store, run_id, cid, users, 4)
    assert len(fresh_provider.to(path)) == 24


async def test_default_stays_two_shards(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    await provider_push(api, section, fresh_provider)
    users = [await push_user(api, section, store) for _ in range(6)]
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    assert r.status_code == 202, r.text
    run_id = str(r.json()["id"])
    assert (await run_result(env.client, run_id)).sent == 6
    assert set(_recipient_shards(store, run_id).values()) <= {0, 1}
    batches = await _batches(env, run_id)
    assert {b["shards"] for b in batches} == {2} and {b["shard"] for b in batches} == {0, 1}, batches


async def test_a_recurring_campaigns_fire_has_the_configured_shards(
    api: httpx.AsyncClient, env: WorkflowEnvironment, settings: Settings, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """The Temporal Schedule written by an API with REJOIN_BROADCAST_SHARDS=4 fires 4-shard runs."""
    async with _api_with(settings, store, env, broadcast_shards=4) as api4:
        sec = await make_section(api4)
        await provider_push(api4, sec, fresh_provider)
        users = [await push_user(api4, sec, store) for _ in range(24)]
        spec = batch_campaign(
            "scheduled", channels=("app_push",),
            schedule={"recurring": True, "time_of_day": "03:00", "timezone": "UTC",
                      "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]},
        )  # fmt: skip
        cid = await create_campaign(api4, sec, spec)
    handle = env.client.get_schedule_handle(campaign_schedule_id(sec.id, cid))
    try:
        # A backfill of the last 03:00 fires a slot ("Trigger" fires now, no slot: it sends nothing).
        now = datetime.now(UTC)
        slot = now.replace(hour=3, minute=0, second=0, microsecond=0)
        slot = slot if slot < now - timedelta(minutes=1) else slot - timedelta(days=1)
        await handle.backfill(
            ScheduleBackfill(start_at=slot - timedelta(minutes=1), end_at=slot + timedelta(minutes=1),
                             overlap=ScheduleOverlapPolicy.ALLOW_ALL)
        )  # fmt: skip

        async def started() -> str:
            with store.session() as s:
                run = s.exec(select(BroadcastRun).where(BroadcastRun.campaign_id == cid)).first()
            assert run is not None
            return run.id

        run_id = await eventually(started, timeout=60)
        await _assert_sharded(env, store, run_id, cid, users, 4)
    finally:
        await handle.delete()  # a daily schedule left running would fire into later tests


async def test_a_feed_triggered_run_has_the_configured_shards(
    api: httpx.AsyncClient, env: WorkflowEnvironment, settings: Settings, store: Store
) -> None:
    """A user feed sync started by an API with REJOIN_BROADCAST_SHARDS=4 plans and drives its
    Change in User Attribute run over 4 shards."""
    async with _api_with(settings, store, env, broadcast_shards=4) as api4:
        sec = await make_section(api4)
        await add_integration(api4, sec)
        rule = {"attribute": "tier", "old": [{"op": "eq", "value": "a"}], "new": [{"op": "eq", "value": "b"}]}
        cid = await create_campaign(api4, sec, batch_campaign("user_attribute_change", attribute_change=rule))
        users = [(await reachable_user(api4, sec))[1] for _ in range(24)]
        with store.session() as s:
            from store.tables import User

            cuids = [s.get(User, u).cuid for u in users]  # type: ignore[union-attr]
        feed = await create_feed(api4, sec, kind="user")
        await upload_feed(api4, env.client, sec, feed, csv_bytes("cuid,tier", *(f"{c},a" for c in cuids)))
        summary = await upload_feed(api4, env.client, sec, feed, csv_bytes("cuid,tier", *(f"{c},b" for c in cuids)))
    (run_id,) = summary.runs
    await _assert_sharded(env, store, run_id, cid, users, 4)


def test_the_setting_reads_the_environment_and_refuses_bad_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REJOIN_BROADCAST_SHARDS", raising=False)
    assert Settings().broadcast_shards == 2
    monkeypatch.setenv("REJOIN_BROADCAST_SHARDS", "4")
    assert Settings().broadcast_shards == 4
    for bad in ("0", "65", "-1", "four"):
        monkeypatch.setenv("REJOIN_BROADCAST_SHARDS", bad)
        with pytest.raises(ValidationError, match="broadcast_shards"):
            Settings()


def test_a_worker_with_a_bad_count_refuses_to_start(tmp_path: Path) -> None:
    """`rejoin worker` stops at once, naming the setting, before it connects anywhere."""
    done = start_worker_with("REJOIN_BROADCAST_SHARDS", "0", tmp_path)
    assert done.returncode != 0
    assert "REJOIN_BROADCAST_SHARDS" in done.stderr and "greater than or equal to 1" in done.stderr, done.stderr[-2000:]


# ------------------------------------------------------------------ replay of older feed syncs


def _history_files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "production-runner"])
@pytest.mark.parametrize("path", _history_files(), ids=lambda p: p.stem)
async def test_recorded_feed_sync_history_replays(path: Path, sandboxed: bool) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    if sandboxed:
        replayer = Replayer(workflows=[FeedSyncWorkflow], data_converter=pydantic_data_converter)
    else:
        replayer = Replayer(
            workflows=[FeedSyncWorkflow], data_converter=pydantic_data_converter,
            workflow_runner=UnsandboxedWorkflowRunner(),
        )  # fmt: skip
    await replayer.replay_workflow(history)


def test_a_feed_sync_history_is_recorded() -> None:
    assert _history_files(), HISTORIES


@pytest.mark.skipif(not RECORDING, reason="records a history (REJOIN_RECORD_HISTORIES=1)")
async def test_record_feed_sync_history(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A user feed sync that triggers one Change in User Attribute run (2 recipients)."""
    target = HISTORIES / "user_feed_triggers_a_run.json"
    assert not target.exists(), f"{target} is recorded already (histories are append-only)"
    await add_integration(api, section)
    rule = {"attribute": "tier", "old": [{"op": "eq", "value": "a"}], "new": [{"op": "eq", "value": "b"}]}
    await create_campaign(api, section, batch_campaign("user_attribute_change", attribute_change=rule))
    users = [(await reachable_user(api, section))[1] for _ in range(2)]
    with store.session() as s:
        from store.tables import User

        cuids = [s.get(User, u).cuid for u in users]  # type: ignore[union-attr]
    feed = await create_feed(api, section, kind="user")
    await upload_feed(api, env.client, section, feed, csv_bytes("cuid,tier", *(f"{c},a" for c in cuids)))
    r = await api.put(f"/api/v1/feeds/{feed}/file", content=csv_bytes("cuid,tier", *(f"{c},b" for c in cuids)),
                      headers=section.mgmt)  # fmt: skip
    assert r.status_code == 202, r.text
    handle = env.client.get_workflow_handle_for(FeedSyncWorkflow.run, r.json()["workflow_id"])
    summary = await handle.result()
    assert len(summary.runs) == 1, summary
    assert (await run_result(env.client, summary.runs[0])).sent == 2
    HISTORIES.mkdir(exist_ok=True)
    target.write_text((await handle.fetch_history()).to_json())
