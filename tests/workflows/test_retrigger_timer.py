"""A re-trigger that postpones the first step writes nothing (patch `retrigger-keeps-timer`): the
journey keeps its running timer, wakes at the earlier deadline and sleeps the rest, instead of
cancelling and restarting its timer and upserting the new deadline on every cart update."""

from __future__ import annotations

from datetime import timedelta

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
    eventually,
    journey_handle,
    journey_result,
    outbox,
    reachable_user,
)
from workflows import search
from workflows.journey import JourneyWorkflow


async def test_retriggers_move_the_deadline_without_restarting_the_timer(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT2H"))
    dyid, uid = await reachable_user(api, section)
    handle = journey_handle(env.client, section, cid, uid)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-a", 5.0))

        async def sleeping() -> None:  # past its first task: the first timer runs
            assert (await handle.query(JourneyWorkflow.current_state)).status == "waiting"

        await eventually(sleeping)
        first = (await handle.query(JourneyWorkflow.current_state)).next_wake_at
        assert await env.fast_forward(handle, timedelta(hours=1))
        for sku in ("sku-b", "sku-c", "sku-d"):
            await collect(api, section, dyid, add_to_cart(sku, 7.0))
        last_count = 4

        async def moved() -> None:  # the journey shows the new deadline at once
            view = await handle.query(JourneyWorkflow.current_state)
            assert view.trigger_count == last_count and first is not None and view.next_wake_at is not None
            assert view.next_wake_at - first > timedelta(minutes=59), (first, view.next_wake_at)

        await eventually(moved)
        # ... and its search attribute the running timer's (a lower bound): re-triggers write nothing.
        assert (await handle.describe()).typed_search_attributes.get(search.NEXT_SEND_AT) == first
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1, result
    assert len(await outbox(api, section)) == 1
    start = (await handle.describe()).start_time
    sent_at = next(d.at for d in result.decisions if d.outcome == "sent")
    # Waited 2 h from the last re-trigger at ~1 h, not from the first trigger.
    assert timedelta(hours=2, minutes=59) < sent_at - start < timedelta(hours=3, minutes=2), sent_at - start
    events = list((await handle.fetch_history()).events)
    kinds = [e.event_type for e in events]
    # The first timer ran to its deadline; one more timer slept the rest. Nothing was cancelled,
    # and the three re-triggers upserted nothing: "sending" and the final status are the upserts
    # after the SDK's patch record, besides the deadline written when the journey woke.
    assert kinds.count(EventType.EVENT_TYPE_TIMER_STARTED) == 2, kinds
    assert kinds.count(EventType.EVENT_TYPE_TIMER_FIRED) == 2
    assert EventType.EVENT_TYPE_TIMER_CANCELED not in kinds
    assert kinds.count(EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES) == 4, kinds
