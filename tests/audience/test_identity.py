"""Identity across devices and the consent rule, through the real API, store and Temporal."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import CapReservation, Event, Journey, Send
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    eventually,
    journey_handle,
    journey_result,
    login,
    new_dyid,
    outbox,
    purchase,
    reachable_user,
)
from workflows.journey import JourneyWorkflow


async def _user_id(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> str:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _journey_rows(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/users/{ref}/journeys", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return list(r.json())


async def _anonymous_journey_then_login(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, sku: str, price: float
) -> tuple[str, str, str, str]:
    """A known person on device 1; device 2 carts anonymously (journey waiting), then logs in as them.

    Returns (campaign id, device-1 dyid, the person's user id, the anonymous user id).
    """
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(wait="PT2H"))
    dyid1, uid1 = await reachable_user(api, sec)
    dyid2 = new_dyid()
    with env.with_time_skipping_disabled():
        await collect(api, sec, dyid2, add_to_cart(sku, price))
    anon = await _user_id(api, sec, dyid2)

    async def enrolled() -> None:
        assert await _journey_rows(api, sec, anon)

    await eventually(enrolled)
    await collect(api, sec, dyid2, login(email_for(dyid1)))
    return cid, dyid1, uid1, anon


async def test_login_on_second_device_merges_into_one_user(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A second device that logs in with a known CUID becomes the same user; its earlier events and cart follow."""
    await add_integration(api, section)
    dyid1, uid1 = await reachable_user(api, section)
    dyid2 = new_dyid()
    await collect(api, section, dyid2, add_to_cart("sku-anon", 12.0))
    anon = await _user_id(api, section, dyid2)
    assert anon != uid1
    await collect(api, section, dyid2, login(email_for(dyid1)))
    assert await _user_id(api, section, dyid2) == uid1
    assert await _user_id(api, section, anon) == uid1  # the merged id still resolves
    r = await api.get(f"/api/v1/users/{dyid1}", headers=section.mgmt)
    assert [i["productId"] for i in r.json()["cart"]] == ["sku-anon"]
    with store.session() as s:
        names = [e.name for e in s.exec(select(Event).where(Event.user_id == uid1)).all()]
        left = s.exec(select(Event).where(Event.user_id == anon)).all()
    assert "Add to Cart" in names and not left


async def test_journey_started_anonymously_sends_to_identified_person(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A journey begun before identification runs for the merged person: their opt-in, caps and sends."""
    cid, dyid1, uid1, anon = await _anonymous_journey_then_login(api, env, section, "sku-7", 30.0)
    handle = journey_handle(env.client, section, cid, anon)
    await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, anon)
    assert result.status == "completed" and result.sent == 1, result
    messages = await outbox(api, section)
    assert [m["recipient"] for m in messages] == [email_for(dyid1)]
    assert messages[0]["payload"]["items"][0]["sku"] == "sku-7"
    with store.session() as s:
        assert {j.user_id for j in s.exec(select(Journey).where(Journey.campaign_id == cid)).all()} == {uid1}
        assert {
            c.user_id for c in s.exec(select(CapReservation).where(CapReservation.campaign_id == cid)).all()
        } == {uid1}
        assert {x.user_id for x in s.exec(select(Send).where(Send.campaign_id == cid)).all()} == {uid1}


async def test_purchase_on_other_device_exits_journey_started_before_merge(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """After a merge, a purchase on the first device exits the journey the second device started."""
    cid, dyid1, uid1, anon = await _anonymous_journey_then_login(api, env, section, "sku-3", 5.0)
    await collect(api, section, dyid1, purchase([("sku-3", 5.0)]))
    result = await journey_result(env.client, section, cid, anon)
    assert result.status == "exited" and result.exit_reason == "purchased", result
    # One journey for the person: the add-to-cart on the first device re-triggered nothing new.
    with pytest.raises(RPCError):
        await journey_handle(env.client, section, cid, uid1).describe()
    assert await outbox(api, section) == []


async def test_cart_after_merge_retriggers_the_running_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A cart event from the identified person re-triggers the journey they already have, not a second one."""
    cid, dyid1, uid1, anon = await _anonymous_journey_then_login(api, env, section, "sku-a", 5.0)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid1, add_to_cart("sku-b", 6.0, cart=[("sku-a", 5.0), ("sku-b", 6.0)]))
    view = await journey_handle(env.client, section, cid, anon).query(JourneyWorkflow.current_state)
    assert view.trigger_count == 2, view
    with pytest.raises(RPCError):
        await journey_handle(env.client, section, cid, uid1).describe()
    await journey_handle(env.client, section, cid, anon).terminate("test done")


@pytest.mark.parametrize("consent", [None, False, "yes", "true", 1])
async def test_only_literal_true_is_consent(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, consent: Any
) -> None:
    """Missing, false or non-boolean active_consent_accepted starts no journey and is recorded as not consented."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign())
    dyid, _ = await reachable_user(api, section)
    user: dict[str, Any] = {"dyid": dyid}
    if consent is not None:
        user["active_consent_accepted"] = consent
    body = {"user": user, "events": [add_to_cart("sku-c")]}
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    assert r.status_code == 202, r.text
    assert any(w["code"] == "NO_CONSENT" for w in r.json()["warnings"])
    with store.session() as s:
        ev = s.get(Event, r.json()["event_ids"][0])
    assert ev is not None and ev.consented is False and ev.commands == []


async def test_true_consent_starts_journey(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """With active_consent_accepted true the same event starts the journey."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign())
    dyid, _ = await reachable_user(api, section)
    r = await collect(api, section, dyid, add_to_cart("sku-c"), consent=True)
    with store.session() as s:
        ev = s.get(Event, r["event_ids"][0])
    assert ev is not None and ev.consented and [c["action"] for c in ev.commands] == ["trigger"]


async def test_merge_leaves_one_journey_per_campaign(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """When both devices had a journey of the campaign, the merged-away one exits as a duplicate."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT2H"))
    dyid1, uid1 = await reachable_user(api, section)
    dyid2 = new_dyid()
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid1, add_to_cart("sku-1", 5.0))
        await collect(api, section, dyid2, add_to_cart("sku-2", 6.0))
    anon = await _user_id(api, section, dyid2)

    async def both_enrolled() -> None:
        assert await _journey_rows(api, section, anon) and await _journey_rows(api, section, uid1)

    await eventually(both_enrolled)
    await collect(api, section, dyid2, login(email_for(dyid1)))
    dup = await journey_result(env.client, section, cid, anon)
    assert dup.status == "exited" and dup.exit_reason == "merged_duplicate", dup
    view = await journey_handle(env.client, section, cid, uid1).query(JourneyWorkflow.current_state)
    assert view.status == "waiting" and view.exit_reason is None
    await journey_handle(env.client, section, cid, uid1).terminate("test done")
