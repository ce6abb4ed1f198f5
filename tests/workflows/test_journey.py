"""The journey engine end to end: HTTP events -> Temporal journey -> provider, virtual time."""

from __future__ import annotations

from datetime import timedelta

import httpx
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
    outbox,
    purchase,
    reachable_user,
    step,
)


async def test_three_step_cart_abandonment_sends_at_virtual_times(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A 3-step cart abandonment sends each step after its wait, measured in workflow time."""
    await add_integration(api, section)
    steps = [step("First"), step("Second", "P1D"), step("Third", "P3D")]
    cid = await create_campaign(api, section, cart_campaign(wait="PT4H", steps=steps))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1", 20.0))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed", result
    sent = [d for d in result.decisions if d.outcome == "sent"]
    assert [d.step_index for d in sent] == [0, 1, 2]
    start = (await journey_handle(env.client, section, cid, uid).describe()).start_time
    offsets = [d.at - start for d in sent]
    expected = [timedelta(hours=4), timedelta(hours=4, days=1), timedelta(hours=4, days=4)]
    for got, want in zip(offsets, expected, strict=True):
        assert abs(got - want) < timedelta(minutes=1), (offsets, expected)
    messages = await outbox(api, section)
    assert [m["payload"]["step"] for m in messages] == ["First", "Second", "Third"]
    assert messages[0]["payload"]["items"][0]["sku"] == "sku-1"


async def test_purchase_exits_journey(api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys) -> None:
    """A purchase during the first wait cancels every step."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT2H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-9"))
    await collect(api, section, dyid, purchase([("sku-9", 10.0)]))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "exited" and result.exit_reason == "purchased", result
    assert await outbox(api, section) == []
