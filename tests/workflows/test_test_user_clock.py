"""A test user's journey keeps its own clock (patch `test-user-own-clock`): its waits pass at once
without timers, and every time it hands out is what time skipping gave before."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Event
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    outbox,
    reachable_user,
    step,
)
from workflows.journey import RETRIGGER_KEEPS_TIMER_PATCH, TEST_USER_CLOCK_PATCH


def _count(events: list[HistoryEvent], kind: EventType.ValueType) -> int:
    return sum(1 for e in events if e.event_type == kind)


async def test_a_test_users_waits_pass_on_its_own_clock_a_real_users_on_timers(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Three steps (1 hour, then 1 day, then 3 days): the test user's journey sends all three
    with the decision times of those waits, without a timer or a workflow task per wait; a real
    user's journey in the same campaign waits on timers."""
    await add_integration(api, section)
    steps = [step("one"), step("two", "P1D"), step("three", "P3D")]
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=steps))
    tester, tester_id = await reachable_user(api, section)
    flagged = await api.put(f"/api/v1/users/{tester}/test", json={"is_test": True}, headers=section.mgmt)
    assert flagged.status_code == 200, flagged.text
    shopper, shopper_id = await reachable_user(api, section)
    ack = await collect(api, section, tester, add_to_cart("sku-1"))
    await collect(api, section, shopper, add_to_cart("sku-1"))

    result = await journey_result(env.client, section, cid, tester_id)
    assert result.status == "completed" and result.sent == 3, result
    with store.session() as s:
        event = s.get(Event, ack["event_ids"][0])
        assert event is not None
    sent = [d.at for d in result.decisions if d.outcome == "sent"]
    gaps = [sent[0] - event.received_at, sent[1] - sent[0], sent[2] - sent[1]]
    for gap, wait in zip(gaps, (timedelta(hours=1), timedelta(days=1), timedelta(days=3)), strict=True):
        assert abs(gap - wait) < timedelta(minutes=1), gaps
    assert len(await outbox(api, section)) >= 3
    events = list((await journey_handle(env.client, section, cid, tester_id).fetch_history()).events)
    assert _count(events, EventType.EVENT_TYPE_TIMER_STARTED) == 0
    assert _count(events, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 3
    assert _count(events, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 4  # start, then one per step result
    patches = b" ".join(p.data for e in events for d in e.marker_recorded_event_attributes.details.values()
                        for p in d.payloads)  # fmt: skip
    # One marker: the newest path patch implies the own clock for a test user.
    assert _count(events, EventType.EVENT_TYPE_MARKER_RECORDED) == 1
    assert RETRIGGER_KEEPS_TIMER_PATCH.encode() in patches and TEST_USER_CLOCK_PATCH.encode() not in patches

    real = await journey_result(env.client, section, cid, shopper_id)
    assert real.sent == 3, real
    real_events = list((await journey_handle(env.client, section, cid, shopper_id).fetch_history()).events)
    assert _count(real_events, EventType.EVENT_TYPE_TIMER_STARTED) == 3
    real_patches = b" ".join(p.data for e in real_events for d in e.marker_recorded_event_attributes.details.values()
                             for p in d.payloads)  # fmt: skip
    assert TEST_USER_CLOCK_PATCH.encode() not in real_patches


async def test_a_test_user_journey_records_its_own_times_in_the_journeys_api(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """The journey row's end (with its last send) is the journey's own, skipped time, as before."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="P2D"))
    dyid, uid = await reachable_user(api, section)
    await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 1, result
    [journey] = (await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)).json()
    assert journey["status"] == "completed" and journey["is_test"] is True
    gap = datetime.fromisoformat(journey["ended_at"]) - datetime.fromisoformat(journey["triggered_at"])
    assert abs(gap - timedelta(days=2)) < timedelta(minutes=1), journey
