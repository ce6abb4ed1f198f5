"""New journeys run their store-only steps as local activities; delivery stays a durable activity."""

from __future__ import annotations

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    reachable_user,
)


async def test_store_steps_are_local_and_delivery_is_durable(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A one-step journey schedules only delivery.deliver on the task queue; enroll/decide/finish are markers."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1, result
    history = await journey_handle(env.client, section, cid, uid).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert scheduled == ["delivery.deliver"], scheduled
    assert markers.count("core_local_activity") == 3, markers  # enroll, decide, finish
    assert len(history.events) <= 30, len(history.events)  # was 40 with durable store steps
