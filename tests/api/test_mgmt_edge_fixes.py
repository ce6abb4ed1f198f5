"""Management API edges: deleting an integration campaigns still send through, the strict test-user
flag, and the render preview of a cart campaign for given SKUs."""

from __future__ import annotations

import httpx

from tests.helpers import (
    SectionKeys,
    add_integration,
    cart_campaign,
    collect,
    create_campaign,
    reachable_user,
    step,
    sync_cart,
)


async def test_deleting_an_integration_active_or_paused_campaigns_use_is_409_naming_them(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Active and paused campaigns sending on the channel block the delete (409 naming them);
    archived ones and campaigns on other channels do not; `?force=true` deletes anyway."""
    email = await add_integration(api, section)
    active = await create_campaign(api, section, cart_campaign(name="Cart recovery"))
    paused = await create_campaign(api, section, cart_campaign(name="Paused one"))
    assert (await api.post(f"/api/v1/campaigns/{paused}/pause", headers=section.mgmt)).status_code == 200
    archived = await create_campaign(api, section, cart_campaign(name="Old one"))
    assert (await api.post(f"/api/v1/campaigns/{archived}/archive", headers=section.mgmt)).status_code == 200
    await create_campaign(api, section, cart_campaign(name="SMS only", steps=[step("Text", channels=("sms",))]))

    r = await api.delete(f"/api/v1/integrations/{email['id']}", headers=section.mgmt)
    assert r.status_code == 409, r.text
    message = r.json()["detail"][0]["msg"]
    assert r.json()["detail"][0]["loc"] == ["path", "integration_id"]
    assert f"'Cart recovery' ({active})" in message and f"'Paused one' ({paused})" in message, message
    assert archived not in message and "SMS only" not in message and "force=true" in message
    assert (await api.get(f"/api/v1/integrations/{email['id']}", headers=section.mgmt)).status_code == 200

    r = await api.delete(f"/api/v1/integrations/{email['id']}", params={"force": "true"}, headers=section.mgmt)
    assert r.status_code == 204, r.text
    assert (await api.get(f"/api/v1/integrations/{email['id']}", headers=section.mgmt)).status_code == 404


async def test_an_integration_no_live_campaign_uses_is_deleted_without_force(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Only archived or draft campaigns (and other channels' campaigns) on the channel: 204."""
    sms = await add_integration(api, section, channel="sms")
    await create_campaign(api, section, cart_campaign(name="Draft", steps=[step("Text", channels=("sms",))]),
                          activate=False)  # fmt: skip
    await create_campaign(api, section, cart_campaign(name="Email"))
    r = await api.delete(f"/api/v1/integrations/{sms['id']}", headers=section.mgmt)
    assert r.status_code == 204, r.text


async def test_the_test_user_flag_takes_json_booleans_only(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """`"yes"`, `"true"`, `1` and `"off"` are 422 naming `is_test` and change nothing; true/false work."""
    await add_integration(api, section)
    dyid, _ = await reachable_user(api, section)
    for wrong in ("yes", "true", 1, 0, "off", None):
        r = await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": wrong}, headers=section.mgmt)
        assert r.status_code == 422, (wrong, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "is_test"], r.text
    assert (await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)).json()["is_test"] is False
    r = await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)
    assert r.status_code == 200 and r.json()["is_test"] is True, r.text
    r = await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": False}, headers=section.mgmt)
    assert r.status_code == 200 and r.json()["is_test"] is False, r.text


async def test_the_render_preview_of_a_cart_campaign_uses_the_given_skus(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Given `skus`, a cart campaign's preview renders a cart of those products (a SKU in the
    user's cart keeps its quantity and price); without them, the user's cart as it is."""
    await add_integration(api, section)
    await api.put("/api/v1/products", headers=section.mgmt, json=[
        {"sku": "mug", "name": "Mug", "price": 12}, {"sku": "hat", "name": "Hat", "price": 20},
        {"sku": "pen", "name": "Pen", "price": 3}])  # fmt: skip
    payload = {"subject": "${Items in cart|name|item1} ${Items in cart|name|item2}",
               "first": "${Items in cart|price|item1} x${Items in cart|quantity|item1}",
               "second": "${Items in cart|price|item2} x${Items in cart|quantity|item2}"}  # fmt: skip
    spec = cart_campaign(steps=[step("S", payload=payload)])
    cid = await create_campaign(api, section, spec, activate=False)
    dyid, _ = await reachable_user(api, section)
    await collect(api, section, dyid, sync_cart([("mug", 9.0)]))

    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt, json={"user": dyid})
    assert r.status_code == 200, r.text
    assert r.json()["payload"]["subject"] == "Mug "  # no SKUs: the cart now

    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt,
                       json={"user": dyid, "skus": ["hat", "mug"]})  # fmt: skip
    assert r.status_code == 200, r.text
    out = r.json()["payload"]
    assert out["subject"] == "Hat Mug", out
    assert out["first"] == "20 x1" and out["second"] == "9 x1", out  # the cart's price for the mug
