"""The journey engine end to end: HTTP events -> Temporal journey -> provider, virtual time."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    eventually,
    holdout_campaign,
    journey_handle,
    journey_result,
    login,
    new_dyid,
    outbox,
    purchase,
    reachable_user,
    step,
    sync_cart,
)
from workflows.journey import JourneyWorkflow
from workflows.models import TriggerSignal


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


async def test_retrigger_during_wait_merges_and_sends_once(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A second add-to-cart during the first wait restarts it; one message carries both items."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT2H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-a", 5.0))
        handle = journey_handle(env.client, section, cid, uid)
        assert await env.fast_forward(handle, timedelta(hours=1))
        await collect(api, section, dyid, add_to_cart("sku-b", 7.0, cart=[("sku-a", 5.0), ("sku-b", 7.0)]))
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed"
    messages = await outbox(api, section)
    assert len(messages) == 1, messages
    assert [i["sku"] for i in messages[0]["payload"]["items"]] == ["sku-a", "sku-b"]
    start = (await handle.describe()).start_time
    sent_at = next(d.at for d in result.decisions if d.outcome == "sent")
    # Waited 2 h from the re-trigger at ~1 h, not from the first trigger.
    assert timedelta(hours=2, minutes=59) < sent_at - start < timedelta(hours=3, minutes=2), sent_at - start


async def test_exit_before_step_two_cancels_the_rest(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A "don't send if" custom event after step 1 cancels steps 2 and 3."""
    await add_integration(api, section)
    steps = [step("One"), step("Two", "P1D"), step("Three", "P2D")]
    spec = cart_campaign(wait="PT1H", steps=steps, exits=[{"event": "custom", "event_name": "Called support"}])
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        handle = journey_handle(env.client, section, cid, uid)
        assert await env.fast_forward(handle, timedelta(hours=2))
        await collect(api, section, dyid, {"name": "Called support", "properties": {"topic": "billing"}})
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "exited" and result.exit_reason == "custom:Called support", result
    assert [m["payload"]["step"] for m in await outbox(api, section)] == ["One"]


async def test_emptied_cart_exits(api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys) -> None:
    """A sync-cart with an empty cart ends a cart abandonment journey."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        await collect(api, section, dyid, sync_cart([]))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason) == ("exited", "cart_emptied")


async def test_cart_that_no_longer_matches_exits(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A Shoes cart campaign: once the shoes leave the cart (socks stay), no reminder goes out."""
    await add_integration(api, section)
    r = await api.put("/api/v1/products", headers=section.mgmt, json=[
        {"sku": "shoe", "name": "Shoe", "categories": ["Shoes"]}, {"sku": "sock", "name": "Sock", "categories": ["Socks"]}])  # fmt: skip
    assert r.status_code < 300, r.text
    shoes = [{"field": "category", "op": "eq", "value": "Shoes"}]
    cid = await create_campaign(api, section, cart_campaign(trigger={"wait": "PT1H", "conditions": shoes}))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("shoe", cart=[("shoe", 50.0), ("sock", 5.0)]))
        await collect(api, section, dyid, sync_cart([("sock", 5.0)]))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason) == ("exited", "cart_no_longer_matches")
    assert await outbox(api, section) == []


async def test_purchase_of_other_item_does_not_exit_trigger_item_rule(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """"Purchased an item of the trigger" exits only when a trigger SKU was bought."""
    await add_integration(api, section)
    spec = {
        "name": "Viewed", "type": "product_view", "trigger": {"wait": "PT1H"}, "channel_priority": ["email"],
        "exits": [{"event": "purchase_of_trigger_item"}],
        "variations": [{"id": "a", "name": "A", "share": 100, "steps": [step("Still thinking?")]}],
    }  # fmt: skip
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section)
    other_dyid, other_uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        for d in (dyid, other_dyid):
            r = await api.post("/v2/collect/user/pageview", headers=section.ing, json={
                "user": {"dyid": d, "active_consent_accepted": True},
                "context": {"page": {"type": "PRODUCT", "data": ["sku-viewed"]}}})  # fmt: skip
            assert r.status_code == 202, r.text
        await collect(api, section, dyid, purchase([("sku-viewed", 9.0)]))
        await collect(api, section, other_dyid, purchase([("sku-other", 9.0)]))
        await env.fast_forward(journey_handle(env.client, section, cid, other_uid))
    assert (await journey_result(env.client, section, cid, uid)).status == "exited"
    kept = await journey_result(env.client, section, cid, other_uid)
    assert kept.status == "completed" and kept.sent == 1, kept


async def test_global_cap_across_two_campaigns(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """5 messages per channel per rolling 24 h over all campaigns: the 6th is capped, later ones pass."""
    await add_integration(api, section)
    a = cart_campaign("A", wait="PT5M", steps=[step("a1"), step("a2", "PT5M"), step("a3", "PT5M")])
    b = cart_campaign("B", wait="PT20M", steps=[step("b1"), step("b2", "PT5M"), step("b3", "PT5M"), step("b4", "P1D")])
    ca, cb = await create_campaign(api, section, a), await create_campaign(api, section, b)
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        await env.fast_forward(journey_handle(env.client, section, ca, uid))
        await env.fast_forward(journey_handle(env.client, section, cb, uid))
    ra = await journey_result(env.client, section, ca, uid)
    rb = await journey_result(env.client, section, cb, uid)
    assert [d.outcome for d in ra.decisions] == ["sent", "sent", "sent"]
    assert [(d.outcome, d.reason) for d in rb.decisions] == [
        ("sent", None), ("sent", None), ("skipped", "global_cap"), ("sent", None)
    ], rb.decisions
    assert len(await outbox(api, section)) == 6


async def test_campaign_cap(api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys) -> None:
    """A campaign's own cap (1 email per day) skips a second step inside the period."""
    await add_integration(api, section)
    spec = cart_campaign(wait="PT5M", steps=[step("x"), step("y", "PT1H"), step("z", "P1D")],
                         settings={"frequency_caps": {"email": {"max_messages": 1, "period": "P1D"}}})  # fmt: skip
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert [(d.outcome, d.reason) for d in result.decisions] == [("sent", None), ("skipped", "campaign_cap"), ("sent", None)]


async def _trigger_both(api: httpx.AsyncClient, section: SectionKeys, dyid: str) -> None:
    """An add-to-cart that enrolls the user in both cart campaigns, once both journeys are listed."""
    await collect(api, section, dyid, add_to_cart("sku-1"))

    async def both_enrolled() -> None:
        r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
        assert len(r.json()) == 2, r.text

    await eventually(both_enrolled)


async def test_campaign_priority_only_highest_sends(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Two campaigns triggered together: the higher priority sends, the lower is outranked."""
    await add_integration(api, section)
    high = await create_campaign(api, section, cart_campaign("High", priority=100))
    low = await create_campaign(api, section, cart_campaign("Low", priority=10))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await _trigger_both(api, section, dyid)
        await env.fast_forward(journey_handle(env.client, section, low, uid))
        await env.fast_forward(journey_handle(env.client, section, high, uid))
    assert (await journey_result(env.client, section, high, uid)).sent == 1
    low_result = await journey_result(env.client, section, low, uid)
    assert low_result.sent == 0
    assert (low_result.decisions[0].reason or "").startswith("outranked"), low_result.decisions


@pytest.mark.parametrize("action", ["archive", "pause"])
async def test_a_paused_or_archived_campaign_outranks_nobody(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, action: str
) -> None:
    """Its open journeys skip their steps, so they no longer silence a lower-priority campaign."""
    await add_integration(api, section)
    high = await create_campaign(api, section, cart_campaign("High", wait="P1D", priority=100))
    low = await create_campaign(api, section, cart_campaign("Low", priority=10))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await _trigger_both(api, section, dyid)
        r = await api.post(f"/api/v1/campaigns/{high}/{action}", headers=section.mgmt)
        assert r.status_code == 200, r.text
        await env.fast_forward(journey_handle(env.client, section, low, uid))
    low_result = await journey_result(env.client, section, low, uid)
    assert low_result.sent == 1, low_result.decisions


async def test_channel_priority_with_opt_in_gaps(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """SMS first when opted in; email when SMS is not; skipped with a reason when neither."""
    await add_integration(api, section, "email")
    await add_integration(api, section, "sms")
    spec = cart_campaign(channel_priority=["sms", "email"], steps=[step("Nudge", channels=("email", "sms"))])
    cid = await create_campaign(api, section, spec)
    both_dyid, both = await reachable_user(api, section, phone="+15550000001")
    email_dyid, email_only = await reachable_user(api, section)
    nobody_dyid = new_dyid()
    await collect(api, section, nobody_dyid, login(email_for(nobody_dyid)))
    nobody = (await api.get(f"/api/v1/users/{nobody_dyid}", headers=section.mgmt)).json()["id"]
    for d in (both_dyid, email_dyid, nobody_dyid):
        await collect(api, section, d, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, both)).decisions[0].channel == "sms"
    assert (await journey_result(env.client, section, cid, email_only)).decisions[0].channel == "email"
    skipped = (await journey_result(env.client, section, cid, nobody)).decisions[0]
    assert (skipped.outcome, skipped.reason) == ("skipped", "not_opted_in")
    sms = await outbox(api, section, channel="sms")
    assert [m["recipient"] for m in sms] == ["+15550000001"]


async def test_holdout_gets_nothing_but_is_recorded(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Users allocated to the control variation receive nothing; their allocation is recorded."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, holdout_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "holdout" and result.sent == 0
    assert await outbox(api, section) == []
    journeys = (await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)).json()
    assert [(j["variation_id"], j["is_control"]) for j in journeys] == [("ctl", True)]


async def test_ten_step_ninety_day_journey_completes_quickly(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Ten steps over 90 days of workflow time all send (time skipped: seconds of wall time)."""
    await add_integration(api, section)
    steps = [step("s0")] + [step(f"s{i}", "P9D") for i in range(1, 10)]
    cid = await create_campaign(api, section, cart_campaign(wait="P9D", steps=steps))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid, timeout=90)
    assert result.sent == 10, result.decisions
    span = result.decisions[-1].at - result.decisions[0].at
    assert abs(span - timedelta(days=81)) < timedelta(minutes=1), span


async def test_many_retriggers_continue_as_new_and_dedupe(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Hundreds of re-trigger signals roll the history over (continue-as-new); duplicates are ignored."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        handle = journey_handle(env.client, section, cid, uid)
        for i in range(150):
            await handle.signal(JourneyWorkflow.retrigger, TriggerSignal(event_id=f"evt_re_{i % 120}", skus=["sku-1"]))
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.runs > 1, "history should have continued as new"
    assert result.sent == 1
    state_triggers = 1 + 120  # the first add-to-cart plus 120 distinct re-trigger ids
    decisions = [d for d in result.decisions if d.outcome == "sent"]
    assert len(decisions) == 1
    assert result.status == "completed", state_triggers


async def test_audience_and_pause(api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys) -> None:
    """Only the audience is triggered; a step due while the campaign is paused is skipped."""
    await add_integration(api, section)
    spec = cart_campaign(audience={"conditions": [{"field": "tier", "op": "eq", "value": "gold"}]},
                         steps=[step("one"), step("two", "P1D")])  # fmt: skip
    cid = await create_campaign(api, section, spec)
    gold, gold_uid = await reachable_user(api, section)
    plain, plain_uid = await reachable_user(api, section)
    r = await api.patch(f"/api/v1/users/{gold}/attributes", json={"tier": "Gold"}, headers=section.mgmt)
    assert r.status_code == 200 and r.json()["attributes"] == {"tier": "Gold"}
    with env.with_time_skipping_disabled():
        await collect(api, section, gold, add_to_cart("sku-1"))
        await collect(api, section, plain, add_to_cart("sku-1"))
        handle = journey_handle(env.client, section, cid, gold_uid)
        assert await env.fast_forward(handle, timedelta(hours=2))
        await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, gold_uid)
    assert [(d.outcome, d.reason) for d in result.decisions] == [("sent", None), ("skipped", "campaign_paused")]
    journeys = (await api.get(f"/api/v1/users/{plain}/journeys", headers=section.mgmt)).json()
    assert journeys == [], "a user outside the audience starts no journey"
    assert plain_uid


async def test_paused_campaign_still_sees_exits(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A purchase while the campaign is paused still ends the journey, so resuming cannot remind a buyer."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT2H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
        await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason) == ("exited", "purchased")
