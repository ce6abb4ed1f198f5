"""Recurring scheduled campaigns: a real Temporal Schedule per campaign, kept in step with the
campaign's lifecycle, whose fires run the batched push fan-out once per slot."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import select
from temporalio.client import ScheduleBackfill, ScheduleHandle, ScheduleOverlapPolicy
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from store.broadcast_tables import BroadcastRun
from store.engine import Store
from tests.audience.feed_helpers import batch_campaign, campaign_sends, provider_push, push_user
from tests.helpers import SectionKeys, create_campaign, eventually
from tests.provider_server import ProviderServer
from workflows.campaign_schedule import ScheduledCampaignWorkflow
from workflows.feed_models import ScheduledFireInput
from workflows.ids import campaign_schedule_id, scheduled_run_id


def _recurring(**schedule: Any) -> dict[str, Any]:
    return batch_campaign(
        "scheduled", channels=("app_push",), schedule={"recurring": True, "days": ["mon", "wed"], **schedule}
    )


async def _campaign(api: httpx.AsyncClient, sec: SectionKeys, cid: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/campaigns/{cid}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _local(times: list[str], tz: str) -> list[tuple[str, int, int]]:
    out = []
    for t in times:
        local = datetime.fromisoformat(t).astimezone(ZoneInfo(tz))
        out.append((("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()], local.hour, local.minute))
    return out


async def test_recurring_campaign_schedule_follows_the_campaign(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Create (paused while draft), activate (fires at 10:00 Mon/Wed Tokyo time, until the end), update
    (18:30), pause, archive (deleted): the Temporal Schedule follows, and the API shows the next fires."""
    until = datetime.now(UTC) + timedelta(days=40)
    spec = _recurring(time_of_day="10:00", timezone="Asia/Tokyo", until=until.isoformat())
    cid = await create_campaign(api, section, spec, activate=False)
    sid = campaign_schedule_id(section.id, cid)
    draft = await _campaign(api, section, cid)
    assert draft["schedule"] == {"id": sid, "paused": True, "next_fire_times": []}, draft

    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert r.status_code == 200, r.text
    fires = r.json()["schedule"]["next_fire_times"]
    local = _local(fires, "Asia/Tokyo")
    assert local and all((h, m) == (10, 0) and d in ("mon", "wed") for d, h, m in local), local
    assert all(datetime.fromisoformat(t) <= until for t in fires)
    desc = await env.client.get_schedule_handle(sid).describe()
    assert desc.schedule.spec.time_zone_name == "Asia/Tokyo" and not desc.schedule.state.paused
    assert desc.schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE

    r = await api.put(f"/api/v1/campaigns/{cid}", json=_recurring(time_of_day="18:30", timezone="Asia/Tokyo"),
                      headers=section.mgmt)  # fmt: skip
    assert r.status_code == 200, r.text
    assert {(h, m) for _, h, m in _local(r.json()["schedule"]["next_fire_times"], "Asia/Tokyo")} == {(18, 30)}

    r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["schedule"]["paused"] is True, r.text
    assert (await env.client.get_schedule_handle(sid).describe()).schedule.state.paused

    r = await api.post(f"/api/v1/campaigns/{cid}/archive", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["schedule"] is None, r.text
    with pytest.raises(RPCError) as err:
        await env.client.get_schedule_handle(sid).describe()
    assert err.value.status == RPCStatusCode.NOT_FOUND


async def test_recurring_spec_is_validated(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """recurring excludes send_at, `until` needs recurring, and only scheduled campaigns recur (422)."""
    bad = [
        _recurring(send_at=datetime.now(UTC).isoformat()),
        batch_campaign("scheduled", channels=("app_push",), schedule={"until": "2030-01-01T00:00:00+00:00"}),
        batch_campaign("price_drop", schedule={"recurring": True}),
        _recurring(until="2030-01-01T00:00:00"),
    ]
    for spec in bad:
        r = await api.post("/api/v1/campaigns", json=spec, headers=section.mgmt)
        assert r.status_code == 422, (spec, r.text)


async def _done_runs(store: Store, cid: str, count: int) -> list[BroadcastRun]:
    """The campaign's `count` runs that sent (state done), once there are that many."""
    return await _ended_runs(store, cid, count, ("done",))


async def _ended_runs(
    store: Store, cid: str, count: int, states: tuple[str, ...] = ("superseded", "cancelled")
) -> list[BroadcastRun]:
    """The campaign's `count` runs in one of `states` (default: ended unsent), once every run has ended."""

    async def check() -> list[BroadcastRun]:
        with store.session() as s:
            runs = list(s.exec(select(BroadcastRun).where(BroadcastRun.campaign_id == cid)).all())
        assert all(r.state in ("done", "superseded", "cancelled") for r in runs), runs
        runs = [r for r in runs if r.state in states]
        assert len(runs) == count, runs
        return runs

    return await eventually(check, timeout=60)


async def _daily_at_three(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer, *, users: int,
) -> tuple[str, ScheduleHandle, list[str]]:  # fmt: skip
    """A push integration, `users` opted-in push users (sorted) and an active campaign recurring
    every day at 03:00 UTC: (campaign id, its schedule, the users). Delete the schedule after."""
    await provider_push(api, section, fresh_provider)
    ids = sorted([await push_user(api, section, store) for _ in range(users)])
    spec = _recurring(time_of_day="03:00", timezone="UTC")
    spec["schedule"]["days"] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    cid = await create_campaign(api, section, spec)
    return cid, env.client.get_schedule_handle(campaign_schedule_id(section.id, cid)), ids


async def test_each_fire_sends_once_and_a_duplicate_fire_sends_nothing(
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    section: SectionKeys,
    store: Store,
    settings: Settings,
    fresh_provider: ProviderServer,
) -> None:
    """A fire of the schedule at a slot (a backfilled past one) messages every opted-in push user once
    in a run named after the slot; firing the same slot again (a duplicate) sends nothing more, and a
    fire at a time that is no slot (Temporal's "Trigger") sends nothing."""
    cid, handle, users = await _daily_at_three(api, env, section, store, fresh_provider, users=3)
    try:
        await _fire_once_each(env, handle, store, settings, fresh_provider, section, cid, users)
    finally:
        # A daily 03:00 UTC schedule left running fires into whatever test runs at 03:00 on the
        # shared provider (a CI run across 03:00 UTC counted its 3 pushes as another test's sends).
        await handle.delete()


async def _fire_once_each(
    env: WorkflowEnvironment,
    handle: ScheduleHandle,
    store: Store,
    settings: Settings,
    fresh_provider: ProviderServer,
    section: SectionKeys,
    cid: str,
    users: list[str],
) -> None:
    # Temporal's "Trigger" fires now, which is no slot of the campaign: its run ends superseded,
    # sending nothing (it sent everyone an extra occurrence; docs/operations.md).
    await handle.trigger()
    (triggered,) = await _ended_runs(store, cid, 1)
    assert triggered.state == "superseded" and triggered.total == 0 and triggered.sent == 0, triggered
    assert await campaign_sends(store, cid) == [] and fresh_provider.deliveries == []

    now = datetime.now(UTC)
    slot = now.replace(hour=3, minute=0, second=0, microsecond=0)
    slot = slot if slot < now - timedelta(minutes=1) else slot - timedelta(days=1)
    await handle.backfill(
        ScheduleBackfill(start_at=slot - timedelta(minutes=1), end_at=slot + timedelta(minutes=1),
                         overlap=ScheduleOverlapPolicy.ALLOW_ALL)
    )  # fmt: skip
    (first,) = await _done_runs(store, cid, 1)
    assert first.id == scheduled_run_id(cid, slot) and first.total == 3 and first.sent == 3, first
    assert sorted(s.user_id for s in await campaign_sends(store, cid)) == users
    assert len(fresh_provider.deliveries) == 3

    # The same slot fired again: the run exists and is done; nobody is messaged twice.
    again = await env.client.execute_workflow(
        ScheduledCampaignWorkflow.run,
        ScheduledFireInput(section_id=section.id, campaign_id=cid, fire_time=slot),
        id=f"dup-{cid}", task_queue=settings.task_queue,
    )  # fmt: skip
    assert again is None
    await asyncio.sleep(0.5)
    assert len(await campaign_sends(store, cid)) == 3 and len(fresh_provider.deliveries) == 3
    assert len(await _done_runs(store, cid, 1)) == 1


async def test_fire_of_a_paused_campaign_sends_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """A fire already on its way when the campaign is paused creates no run."""
    cid = await create_campaign(api, section, _recurring(time_of_day="03:00"))
    r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
    assert r.status_code == 200, r.text
    result = await env.client.execute_workflow(
        ScheduledCampaignWorkflow.run,
        ScheduledFireInput(section_id=section.id, campaign_id=cid, fire_time=datetime.now(UTC)),
        id=f"paused-{cid}", task_queue=settings.task_queue,
    )  # fmt: skip
    assert result is None
    with store.session() as s:
        assert s.exec(select(BroadcastRun).where(BroadcastRun.campaign_id == cid)).first() is None


async def test_update_that_stops_recurring_deletes_the_schedule(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Recurring -> once at `send_at` (a one-action schedule) -> the next slot by hand (no schedule)."""
    cid = await create_campaign(api, section, _recurring(time_of_day="08:15"))
    assert (await _campaign(api, section, cid))["schedule"]["paused"] is False
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    once = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": at.isoformat()})
    r = await api.put(f"/api/v1/campaigns/{cid}", json=once, headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert [datetime.fromisoformat(t) for t in r.json()["schedule"]["next_fire_times"]] == [at], r.text
    by_hand = batch_campaign("scheduled", channels=("app_push",), schedule={"time_of_day": "09:00"})
    r = await api.put(f"/api/v1/campaigns/{cid}", json=by_hand, headers=section.mgmt)
    assert r.status_code == 200 and r.json()["schedule"] is None, r.text
    with pytest.raises(RPCError) as err:
        await env.client.get_schedule_handle(campaign_schedule_id(section.id, cid)).describe()
    assert err.value.status == RPCStatusCode.NOT_FOUND


async def test_one_off_campaign_fires_at_send_at_once_even_when_also_started_by_hand(
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    section: SectionKeys,
    store: Store,
    settings: Settings,
    fresh_provider: ProviderServer,
) -> None:
    """`send_at` gets a one-action Temporal Schedule at that instant; a hand-started run and the
    schedule's fire of that instant are the same run: every opted-in push user is messaged once."""
    await provider_push(api, section, fresh_provider)
    users = sorted([await push_user(api, section, store) for _ in range(2)])
    later = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    cid = await create_campaign(
        api, section, batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": later.isoformat()})
    )
    shown = (await _campaign(api, section, cid))["schedule"]
    assert [datetime.fromisoformat(t) for t in shown["next_fire_times"]] == [later], shown
    desc = await env.client.get_schedule_handle(campaign_schedule_id(section.id, cid)).describe()
    assert desc.schedule.state.limited_actions and desc.schedule.state.remaining_actions == 1

    # Move the instant into the past (an update re-arms the schedule at the new instant), start
    # it by hand, then let the schedule fire that same instant (a backfill gives the nominal time).
    past = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": past.isoformat()})
    r = await api.put(f"/api/v1/campaigns/{cid}", json=spec, headers=section.mgmt)
    assert r.status_code == 200, r.text
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    assert r.status_code == 202, r.text
    assert r.json()["id"] == scheduled_run_id(cid, past)
    await env.client.get_schedule_handle(campaign_schedule_id(section.id, cid)).backfill(
        ScheduleBackfill(start_at=past - timedelta(seconds=30), end_at=past + timedelta(seconds=30),
                         overlap=ScheduleOverlapPolicy.ALLOW_ALL)
    )  # fmt: skip
    (run,) = await _done_runs(store, cid, 1)
    assert run.sent == 2, run
    await asyncio.sleep(1.0)  # the schedule's fire of the same instant must add nothing
    assert sorted(s.user_id for s in await campaign_sends(store, cid)) == users
    assert len(fresh_provider.deliveries) == 2
    again = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    assert again.status_code == 202 and again.json()["id"] == run.id


async def test_a_recurring_slot_started_by_hand_and_fired_by_the_schedule_sends_once(
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    section: SectionKeys,
    store: Store,
    settings: Settings,
    fresh_provider: ProviderServer,
) -> None:
    """Starting a recurring campaign's next slot by hand names the run after that slot, as the
    schedule names its fires: when the schedule fires the slot it finds that run, and every
    opted-in push user gets the slot's message once (it made a second run, and two messages)."""
    cid, handle, users = await _daily_at_three(api, env, section, store, fresh_provider, users=2)
    try:
        now = datetime.now(UTC)
        slot = now.replace(hour=3, minute=0, second=0, microsecond=0)
        slot = slot if slot > now else slot + timedelta(days=1)
        r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
        assert r.status_code == 202 and r.json()["id"] == scheduled_run_id(cid, slot), r.text
        again = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)  # a second click
        assert again.json()["id"] == r.json()["id"]
        fired = await env.client.execute_workflow(
            ScheduledCampaignWorkflow.run,
            ScheduledFireInput(section_id=section.id, campaign_id=cid, fire_time=slot),
            id=f"fire-{cid}", task_queue=settings.task_queue,
        )  # fmt: skip
        assert fired is None  # the slot's run was already started by hand
        (run,) = await _done_runs(store, cid, 1)
        assert run.sent == 2, run
        assert sorted(s.user_id for s in await campaign_sends(store, cid)) == users
        assert len(fresh_provider.deliveries) == 2
    finally:
        await handle.delete()
