"""The API enrolls a journey with the trigger that starts it (patch `enroll-at-trigger`): the
journey row exists from the 202 on, the workflow runs no enroll step, and an enrollment whose
trigger found another journey of the person already running is withdrawn: ended as "merged"
(one active row per journey run; reports still see when the person first triggered)."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlmodel import select
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from api.deps import AppState
from api.ingestion import redispatch_pending
from api.journeys import start_or_retrigger, started_new_run, trigger_input
from settings import Settings
from store.engine import Store
from store.tables import Event, Journey
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    app_state,
    cart_campaign,
    collect,
    create_campaign,
    eventually,
    holdout_campaign,
    journey_handle,
    journey_result,
    reachable_user,
)
from workflows.journey import JourneyWorkflow
from workflows.models import TriggerSignal


def _journeys(store: Store, campaign_id: str, user_id: str, *, merged: bool = False) -> list[Journey]:
    """The person's journey rows in the campaign, oldest first (withdrawn ones only if `merged`)."""
    with store.session() as s:
        rows = s.exec(select(Journey).where(Journey.campaign_id == campaign_id, Journey.user_id == user_id)).all()
        return sorted((j for j in rows if merged or j.status != "merged"), key=lambda j: j.triggered_at)


async def test_the_trigger_records_the_journey_and_the_workflow_enrolls_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Right after the 202 the journey row exists (active, in its variation, triggered when the
    event was received); the workflow carries that journey id and schedules no enroll step."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    handle = journey_handle(env.client, section, cid, uid)
    with env.with_time_skipping_disabled():
        ack = await collect(api, section, dyid, add_to_cart("sku-1"))
        rows = _journeys(store, cid, uid)
        with store.session() as s:
            event = s.get(Event, ack["event_ids"][0])
        assert event is not None
        assert [(j.status, j.variation_id, j.is_test) for j in rows] == [("active", "a", False)], rows
        assert rows[0].triggered_at == event.received_at and rows[0].workflow_id == handle.id

        async def waiting() -> None:
            view = await handle.query(JourneyWorkflow.current_state)
            assert view.status == "waiting" and view.journey_id == rows[0].id, view

        await eventually(waiting)
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.journey_id == rows[0].id and result.sent == 1, result
    events = (await handle.fetch_history()).events
    kinds = [e.event_type for e in events]
    assert EventType.EVENT_TYPE_MARKER_RECORDED in kinds  # the patch marker
    local = [e for e in events if e.marker_recorded_event_attributes.marker_name == "core_local_activity"]
    assert not local, local  # no enroll (nor finish: the send ended the row)
    [row] = _journeys(store, cid, uid)
    assert row.status == "completed" and row.ended_at == row.last_sent_at


async def test_a_trigger_that_finds_the_journey_running_withdraws_its_enrollment(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """The API saw no active journey (the row had just ended while its workflow was still
    finishing), so it enrolled a second one; signal-with-start only signalled the running journey,
    so the second row is withdrawn and the running journey took the trigger."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    handle = journey_handle(env.client, section, cid, uid)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        [first] = _journeys(store, cid, uid)
        with store.session() as s:  # the row ended before the workflow did (a last send's transaction)
            row = s.get(Journey, first.id)
            assert row is not None
            row.status = "completed"
            s.add(row)
        await collect(api, section, dyid, add_to_cart("sku-2"))
        view = await handle.query(JourneyWorkflow.current_state)
        assert view.trigger_count == 2 and view.journey_id == first.id, view
        rows = _journeys(store, cid, uid, merged=True)  # the second enrollment ended as merged, at its trigger
        assert [(j.id, j.status) for j in rows] == [(first.id, "completed"), (rows[1].id, "merged")], rows
        assert rows[1].ended_at == rows[1].triggered_at and rows[1].id != first.id
        listed = (await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)).json()
        assert [j["id"] for j in listed] == [first.id]  # a merged trigger is not a journey of its own
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.journey_id == first.id and result.sent == 1


async def test_concurrent_first_triggers_leave_one_journey_row(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Simultaneous first triggers of one person may each enroll: exactly the row of the journey
    that runs stays active; each person counts once in the report, from their first trigger."""
    import asyncio

    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyids = [await reachable_user(api, section) for _ in range(3)]
    with env.with_time_skipping_disabled():
        await asyncio.gather(
            *(collect(api, section, dyid, add_to_cart(f"sku-{i}")) for dyid, _ in dyids for i in range(6))
        )
        for _, uid in dyids:
            view = await journey_handle(env.client, section, cid, uid).query(JourneyWorkflow.current_state)
            assert view.trigger_count == 6, view
            assert [j.id for j in _journeys(store, cid, uid)] == [view.journey_id]
    report = (await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt)).json()
    assert report["totals"]["users_triggered"] == 3, report["totals"]


async def test_start_or_retrigger_says_whether_it_started_a_run(env: WorkflowEnvironment, section: SectionKeys) -> None:
    """Pins what the withdrawal relies on: signal-with-start tells a new run from a signalled one
    (read from the handle temporalio returns)."""
    wid = f"journey/{section.id}/pin/started"
    inp = trigger_input(section.id, "nope", 1, "usr_none", timedelta(days=1), False, timedelta(seconds=5))
    queue = "no-worker-polls-this"  # the journey itself must not run: only the answers matter
    first = await start_or_retrigger(env.client, queue, wid, inp, TriggerSignal(event_id="e1"))
    again = await start_or_retrigger(env.client, queue, wid, inp, TriggerSignal(event_id="e2"))
    await env.client.get_workflow_handle(wid).terminate("test over")
    assert (started_new_run(first), started_new_run(again)) == (True, False)


async def test_a_holdout_is_recorded_by_the_api_and_its_workflow_writes_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A control-variation journey is recorded ended ("holdout") with its trigger; the workflow
    returns at once without a store step."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, holdout_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    [row] = _journeys(store, cid, uid)
    assert (row.status, row.is_control, row.ended_at) == ("holdout", True, row.triggered_at)
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "holdout" and result.journey_id == row.id
    events = (await journey_handle(env.client, section, cid, uid).fetch_history()).events
    assert not [e for e in events if e.marker_recorded_event_attributes.marker_name == "core_local_activity"]


async def test_a_replayed_trigger_keeps_the_journey_it_started(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """The API started the journey but its "dispatched" mark was lost (a crash): the sweeper's
    replay only signals the journey, which is this enrollment's own, so nothing is withdrawn;
    likewise once it has ended (a holdout ends at once)."""
    await add_integration(api, section)
    running_cid = await create_campaign(api, section, cart_campaign(name="running", wait="PT1H"))
    holdout_cid = await create_campaign(api, section, holdout_campaign())
    dyid, uid = await reachable_user(api, section)
    state = AppState(settings=settings, store=store, temporal=env.client)
    with env.with_time_skipping_disabled():
        ack = await collect(api, section, dyid, add_to_cart("sku-1"))
        await journey_result(env.client, section, holdout_cid, uid)
        # The API's batched mark must land first, or it would overwrite the lost mark set below.
        await app_state(api).dispatch_marks.flush()
        with store.session() as s:
            event = s.get(Event, ack["event_ids"][0])
            assert event is not None
            event.dispatched = False  # as if the API died between the dispatch and its mark
            s.add(event)
        assert await redispatch_pending(state, older_than=timedelta(0)) >= 1
        for cid in (running_cid, holdout_cid):
            assert len(_journeys(store, cid, uid)) == 1, cid
        view = await journey_handle(env.client, section, running_cid, uid).query(JourneyWorkflow.current_state)
        assert view.journey_id == _journeys(store, running_cid, uid)[0].id and view.trigger_count == 1, view
        await env.fast_forward(journey_handle(env.client, section, running_cid, uid))
    assert (await journey_result(env.client, section, running_cid, uid)).sent == 1
