"""A run started for a slot of a scheduled campaign checks, when it wakes, that the slot is still one of
the campaign's (activities/broadcast.py::off_schedule): an edit that moved the slot, a one-off `send_at`
moved, a fire that is no slot (Temporal's "Trigger"), or a campaign paused since ends it unsent
(`superseded` / `cancelled`). A trial: a recurring campaign's next slot started by hand, then moved to
another time with a new title: the old run sent the old title to 2977 people, the new slot the new
one to the same 2977. A run whose slot remains sends the campaign's latest version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlmodel import col, select
from temporalio.client import ScheduleHandle
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from store.broadcast_tables import BroadcastRun
from store.engine import Store
from store.tables import Send
from tests.audience.feed_helpers import batch_campaign, get_run, provider_push, push_user, run_result
from tests.helpers import SectionKeys, create_campaign, step
from tests.provider_server import ProviderServer
from workflows.campaign_schedule import ScheduledCampaignWorkflow
from workflows.feed_models import ScheduledFireInput
from workflows.ids import campaign_schedule_id, scheduled_run_id


def _daily(at: str, title: str) -> dict[str, Any]:
    spec = batch_campaign("scheduled", channels=("app_push",))
    spec["variations"][0]["steps"] = [step("Only", channels=("app_push",), payload={"title": title})]
    spec["schedule"] = {"recurring": True, "time_of_day": at, "timezone": "UTC",
                        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}  # fmt: skip
    return spec


def _next(hour: int) -> datetime:
    now = datetime.now(UTC)
    slot = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return slot if slot > now else slot + timedelta(days=1)


def _run_sends(store: Store, run_id: str) -> list[Send]:
    with store.session() as s:
        return list(s.exec(select(Send).where(col(Send.key).startswith(f"bcast:{run_id}:"))).all())


async def _setup(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    provider: ProviderServer, spec: dict[str, Any], users: int = 2,
) -> tuple[str, ScheduleHandle]:  # fmt: skip
    await provider_push(api, section, provider)
    for _ in range(users):
        await push_user(api, section, store)
    cid = await create_campaign(api, section, spec)
    return cid, env.client.get_schedule_handle(campaign_schedule_id(section.id, cid))


async def test_a_hand_started_slot_moved_by_an_edit_sends_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """The trial's repro: the next 03:00 started by hand, then the campaign moved to 04:00 with a new
    title. The PUT answer warns of the run; the 03:00 run wakes and ends superseded, sending nothing."""
    cid, handle = await _setup(api, env, section, store, fresh_provider, _daily("03:00", "v1"))
    try:
        slot = _next(3)
        r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
        assert r.status_code == 202 and r.json()["id"] == scheduled_run_id(cid, slot), r.text
        run_id = r.json()["id"]
        r = await api.put(f"/api/v1/campaigns/{cid}", json=_daily("04:00", "v2"), headers=section.mgmt)
        assert r.status_code == 200, r.text
        (warning,) = r.json()["warnings"]
        assert run_id in warning and "will not send" in warning, warning

        progress = await run_result(env.client, run_id)
        assert progress.state == "superseded" and progress.sent == 0, progress
        shown = await get_run(api, section, run_id)
        assert shown["state"] == "superseded" and shown["total"] == 0 and shown["sent"] == 0, shown
        assert "not sent" in shown["reason"] and "not a slot" in shown["reason"], shown
        assert shown["finished_at"] is not None
        assert _run_sends(store, run_id) == []
        assert not any(b"v1" in d.body for d in fresh_provider.deliveries)
    finally:
        await handle.delete()


async def test_a_slot_that_remains_sends_the_latest_content(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """Started by hand, then only the content edited: the run sends once, the version current when it
    wakes (as the schedule's own fire of that slot would), with no warning on the edit."""
    cid, handle = await _setup(api, env, section, store, fresh_provider, _daily("03:00", "v1"))
    try:
        r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
        run_id = r.json()["id"]
        r = await api.put(f"/api/v1/campaigns/{cid}", json=_daily("03:00", "v2"), headers=section.mgmt)
        assert r.status_code == 200 and r.json()["warnings"] == [], r.text

        progress = await run_result(env.client, run_id)
        assert progress.state == "done" and progress.sent == 2, progress
        with store.session() as s:
            run = s.get(BroadcastRun, run_id)
            assert run is not None and run.campaign_version == 2, run
        mine = [d for d in fresh_provider.deliveries if b"v1" in d.body or b"v2" in d.body]
        assert len(mine) == 2 and all(b"v2" in d.body for d in mine), [d.body for d in mine]
    finally:
        await handle.delete()


async def test_a_one_off_send_at_moved_after_a_hand_start_sends_nothing_at_the_old_instant(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    first = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": first.isoformat()})
    cid, handle = await _setup(api, env, section, store, fresh_provider, spec)
    try:
        r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
        run_id = r.json()["id"]
        assert run_id == scheduled_run_id(cid, first)
        moved = dict(spec, schedule={"send_at": (first + timedelta(days=1)).isoformat()})
        r = await api.put(f"/api/v1/campaigns/{cid}", json=moved, headers=section.mgmt)
        assert r.status_code == 200 and len(r.json()["warnings"]) == 1, r.text

        progress = await run_result(env.client, run_id)
        assert progress.state == "superseded", progress
        shown = await get_run(api, section, run_id)
        assert shown["state"] == "superseded" and "now sends at" in shown["reason"], shown
        assert _run_sends(store, run_id) == []
    finally:
        await handle.delete()


async def test_a_fire_at_a_time_that_is_no_slot_sends_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """Temporal's "Trigger" fires the schedule now, which is no slot of the campaign: not an extra
    occurrence for everyone (docs/operations.md: send now with `POST /campaigns/{id}/runs`)."""
    cid, handle = await _setup(api, env, section, store, fresh_provider, _daily("03:00", "v1"))
    try:
        now = _next(3) - timedelta(hours=5, minutes=17)
        result = await env.client.execute_workflow(
            ScheduledCampaignWorkflow.run,
            ScheduledFireInput(section_id=section.id, campaign_id=cid, fire_time=now),
            id=f"trigger-{cid}", task_queue=settings.task_queue,
        )  # fmt: skip
        assert result is not None and result.state == "superseded", result
        run_id = scheduled_run_id(cid, now)
        assert (await get_run(api, section, run_id))["state"] == "superseded"
        assert _run_sends(store, run_id) == []
    finally:
        await handle.delete()


async def test_a_run_whose_campaign_was_paused_before_its_slot_is_cancelled(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    cid, handle = await _setup(api, env, section, store, fresh_provider, _daily("03:00", "v1"))
    try:
        r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
        run_id = r.json()["id"]
        r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
        assert r.status_code == 200, r.text
        (warning,) = r.json()["warnings"]
        assert run_id in warning and "sends nothing" in warning, warning
        progress = await run_result(env.client, run_id)
        assert progress.state == "cancelled", progress
        shown = await get_run(api, section, run_id)
        assert shown["state"] == "cancelled" and "campaign paused" in shown["reason"], shown
        assert _run_sends(store, run_id) == []
    finally:
        await handle.delete()


async def test_a_campaign_paused_and_activated_again_before_the_slot_sends_at_it(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """The pause leaves a run still waiting for its slot alone (it is not signalled to end): it checks the
    campaign when it wakes, and the campaign is active again by then, so the slot is not lost."""
    cid, handle = await _setup(api, env, section, store, fresh_provider, _daily("03:00", "v1"))
    try:
        r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
        run_id = r.json()["id"]
        r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
        assert r.status_code == 200 and "unless the campaign is active again" in " ".join(r.json()["warnings"]), r.text
        r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
        assert r.status_code == 200, r.text
        progress = await run_result(env.client, run_id)
        assert progress.state == "done", progress
        assert len(_run_sends(store, run_id)) == 2
    finally:
        await handle.delete()
