"""A merge moves the device's running journeys to the person; one the person's own events since its
trigger would have ended must end. A device carted anonymously (journey J_A), the person then carted
and bought on another device, and the device logged in: J_A, now the person's, ran on and reminded
them of their (empty) cart after the purchase. The merge now exits it (`purchased`, or
`cart_emptied` when the person's newer empty cart came from emptying it); a device that carted after
the purchase keeps its journey, as its cart is the person's now."""

from __future__ import annotations

from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
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
    login,
    new_dyid,
    opt_in,
    purchase,
    step,
    stored_journeys,
    sync_cart,
)

EMAIL = "merge-exit@t.example"


async def _user_id(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> str:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _ended(store: Store, campaign_id: str, user_id: str) -> None:
    """The person's own journey has ended (its row says so), without skipping time: awaiting its
    result would let the time-skipping server run the device's journey's waits meanwhile."""

    async def check() -> None:
        assert [j.status for j in stored_journeys(store, campaign_id, user_id)] == ["exited"]

    await eventually(check)


async def _campaign(api: httpx.AsyncClient, sec: SectionKeys) -> str:
    await add_integration(api, sec)
    await opt_in(api, sec, "email", "email", EMAIL)
    return await create_campaign(api, sec, cart_campaign(steps=[step("s0"), step("s1", wait="PT2H")]))


async def _merged_after(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, campaign_id: str,
    person_ends: dict[str, Any], device_then: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """The device carts (its journey J_A), the person carts on another device and ends their journey
    with `person_ends`, the device sends `device_then` if any, then logs in (the merge), and J_A's
    waits pass; (the device's user id, the person's)."""
    device, person_device = new_dyid(), new_dyid()
    with env.with_time_skipping_disabled():  # the device's journey waits until the merge
        await collect(api, section, device, add_to_cart("sku-1"))  # J_A, anonymous
        anonymous = await _user_id(api, section, device)
        await collect(api, section, person_device, login(EMAIL), add_to_cart("sku-1"))  # the person's J_P
        person = await _user_id(api, section, person_device)
        await collect(api, section, person_device, person_ends)
        await _ended(store, campaign_id, person)
        if device_then is not None:
            await collect(api, section, device, device_then)
        await collect(api, section, device, login(EMAIL))  # merges the device's user into the person
        await env.fast_forward(journey_handle(env.client, section, campaign_id, anonymous))  # waits pass, if any
    return anonymous, person


async def test_purchase_on_another_device_ends_the_moved_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    cid = await _campaign(api, section)
    anonymous, person = await _merged_after(api, env, section, store, cid, purchase([("sku-1", 10.0)]))
    moved = await journey_result(env.client, section, cid, anonymous)
    assert (moved.status, moved.exit_reason, moved.sent) == ("exited", "purchased", 0), moved
    assert [j.status for j in stored_journeys(store, cid, person)] == ["exited", "exited"]


async def test_emptied_cart_on_another_device_ends_the_moved_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    cid = await _campaign(api, section)
    anonymous, _ = await _merged_after(api, env, section, store, cid, sync_cart([]))
    moved = await journey_result(env.client, section, cid, anonymous)
    assert (moved.status, moved.exit_reason, moved.sent) == ("exited", "cart_emptied", 0), moved


async def test_device_carting_after_the_purchase_keeps_its_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """The device's cart changed last: it is the person's cart, and its journey goes on."""
    cid = await _campaign(api, section)
    carted = add_to_cart("sku-2", cart=[("sku-1", 10.0), ("sku-2", 10.0)])
    anonymous, _ = await _merged_after(api, env, section, store, cid, purchase([("sku-1", 10.0)]), carted)
    moved = await journey_result(env.client, section, cid, anonymous)
    assert (moved.status, moved.sent) == ("completed", 2), moved
