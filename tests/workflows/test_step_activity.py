"""New journeys run each step as one durable activity (decide + deliver) (patch
`step-in-one-activity`), are enrolled by the API with their trigger (patch `enroll-at-trigger`:
no enroll step) and finish as a local activity only when no send ended them: the last step's
send ends the journey row itself."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Journey
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    eventually,
    journey_handle,
    journey_result,
    reachable_user,
    step,
)
from workflows import search
from workflows.journey import ENROLL_AT_TRIGGER_PATCH, RETRIGGER_KEEPS_TIMER_PATCH, STEP_ACTIVITY_PATCH, JourneyWorkflow
from workflows.models import JourneyView


def _of_type(events: list[HistoryEvent], kind: EventType.ValueType) -> list[HistoryEvent]:
    return [e for e in events if e.event_type == kind]


def _scheduled(events: list[HistoryEvent]) -> list[str]:
    """The activity types the journey scheduled on the task queue, in order."""
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in _of_type(events, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    ]


async def test_one_step_journey_is_one_activity_and_no_local_store_step(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A one-step journey schedules only journey.send_step and runs no local activity: the API
    enrolled it, the finish was written with the send; search attributes are written only when
    they change."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1, result
    events = list((await journey_handle(env.client, section, cid, uid).fetch_history()).events)
    scheduled = _scheduled(events)
    markers = [e.marker_recorded_event_attributes for e in _of_type(events, EventType.EVENT_TYPE_MARKER_RECORDED)]
    assert scheduled == ["journey.send_step"], scheduled
    assert [m.marker_name for m in markers] == ["core_patch"], markers  # no local activity
    patch_data = b" ".join(p.data for d in markers[0].details.values() for p in d.payloads)
    # One marker: the newest path patch implies enroll-at-trigger and step-in-one-activity.
    assert RETRIGGER_KEEPS_TIMER_PATCH.encode() in patch_data
    assert ENROLL_AT_TRIGGER_PATCH.encode() not in patch_data and STEP_ACTIVITY_PATCH.encode() not in patch_data
    upserts = [
        sorted(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
        for e in _of_type(events, EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES)
    ]
    # The SDK's own patch record, "sending", the final status: the API started the journey
    # "waiting" in its variation until the deadline the workflow then computed (no upsert for those).
    status = ["RejoinJourneyStatus", "RejoinNextSendAt", "RejoinStepIndex"]
    assert upserts == [["TemporalChangeVersion"], status, status], upserts
    started = events[0].workflow_execution_started_event_attributes
    assert set(started.search_attributes.indexed_fields) >= {"RejoinVariationId", "RejoinNextSendAt"}, started
    assert len(events) <= 23, len(events)  # 24 with a local enroll, 28 with local decide/finish, 40 durable
    desc = await journey_handle(env.client, section, cid, uid).describe()
    assert desc.typed_search_attributes.get(search.JOURNEY_STATUS) == "completed"
    with store.session() as s:
        row = s.get(Journey, result.journey_id)
        assert row is not None and row.status == "completed" and row.ended_at is not None
        assert row.last_sent_at == row.ended_at


async def test_only_the_last_step_ends_the_journey_with_its_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Three steps: two sends leave the journey open, the third closes it; one activity per step."""
    await add_integration(api, section)
    steps = [step("one"), step("two", "P1D"), step("three", "P3D")]
    cid = await create_campaign(api, section, cart_campaign(steps=steps))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 3, result
    events = list((await journey_handle(env.client, section, cid, uid).fetch_history()).events)
    scheduled = _scheduled(events)
    assert scheduled == ["journey.send_step"] * 3, scheduled
    locals_ = [m for m in _of_type(events, EventType.EVENT_TYPE_MARKER_RECORDED)
               if m.marker_recorded_event_attributes.marker_name == "core_local_activity"]  # fmt: skip
    assert not locals_, locals_  # no enroll (the API did), no decide, no finish
    with store.session() as s:
        row = s.get(Journey, result.journey_id)
        assert row is not None and row.status == "completed" and row.ended_at == row.last_sent_at


async def test_a_new_journey_is_searchable_as_waiting_until_its_real_deadline(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """From its start a journey shows "waiting", its variation and the deadline it really keeps
    (the API's receive time + the trigger wait). A re-trigger that postpones the send leaves the
    attribute at the running timer's deadline (a lower bound; the query shows the new deadline at
    once) and the journey writes the new one when it wakes there and sleeps the rest."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    handle = journey_handle(env.client, section, cid, uid)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        attrs = (await handle.describe()).typed_search_attributes  # as the API started it
        assert attrs.get(search.JOURNEY_STATUS) == "waiting" and attrs.get(search.VARIATION_ID) == "a"

        async def waiting() -> JourneyView:
            view = await handle.query(JourneyWorkflow.current_state)
            assert view.status == "waiting" and view.next_wake_at is not None, view  # past its first task
            return view

        view = await eventually(waiting)
        attrs = (await handle.describe()).typed_search_attributes
        assert attrs.get(search.NEXT_SEND_AT) == view.next_wake_at  # one deadline, not an estimate
        assert attrs.get(search.JOURNEY_STATUS) == "waiting"
        first = view.next_wake_at
        assert first is not None
        assert await env.fast_forward(handle, timedelta(minutes=30))
        await collect(api, section, dyid, add_to_cart("sku-2"))  # delivery relevancy: waits from now

        async def moved() -> datetime:
            again = await handle.query(JourneyWorkflow.current_state)
            assert again.trigger_count == 2 and again.next_wake_at is not None and again.next_wake_at > first
            return again.next_wake_at

        postponed = await eventually(moved)
        assert (await handle.describe()).typed_search_attributes.get(search.NEXT_SEND_AT) == first
        assert postponed - first > timedelta(minutes=29)
        assert await env.fast_forward(handle, timedelta(minutes=31))  # the first timer fires, not the second

        async def rewritten() -> None:
            attrs = (await handle.describe()).typed_search_attributes
            assert attrs.get(search.NEXT_SEND_AT) == postponed and attrs.get(search.JOURNEY_STATUS) == "waiting"

        await eventually(rewritten)
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1 and result.runs == 1
