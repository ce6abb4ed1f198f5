"""Cart lines' `itemPrice` and `quantity` are bounded as an event's `value` is (1e308 was accepted),
and a device id with a `/` is refused as a cuid with one is (its user could never be looked up or
erased by it: `GET /api/v1/users/a%2Fb` 404s). Both are 422s naming the field; nothing is stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import SectionKeys, add_to_cart, sync_cart


async def _post(
    api: httpx.AsyncClient, sec: SectionKeys, user: dict[str, Any], event: dict[str, Any]
) -> httpx.Response:
    return await api.post("/v2/collect/user/event", json={"user": user, "events": [event]}, headers=sec.ing)


@pytest.mark.parametrize(("field", "value"), [("itemPrice", 1e308), ("quantity", 1e308), ("itemPrice", 1e25)])
async def test_cart_line_amounts_are_bounded(
    api: httpx.AsyncClient, section: SectionKeys, field: str, value: float
) -> None:
    event = sync_cart([("sku-1", 10.0)])
    event["properties"]["cart"][0][field] = value
    r = await _post(api, section, {"dyid": "b1"}, event)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "events", 0, "properties", "cart", 0, field], r.json()


async def test_add_to_cart_quantity_is_bounded(api: httpx.AsyncClient, section: SectionKeys) -> None:
    event = add_to_cart("sku-1")
    event["properties"]["quantity"] = 1e300
    r = await _post(api, section, {"dyid": "b2"}, event)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "quantity", r.text


async def test_largest_amounts_still_pass(api: httpx.AsyncClient, section: SectionKeys) -> None:
    event = sync_cart([("sku-1", 1e24)])
    event["properties"]["cart"][0]["quantity"] = 1e24
    r = await _post(api, section, {"dyid": "b3"}, event)
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("field", ["dyid", "dyid_server", "id"])
async def test_device_id_with_a_slash_is_refused(api: httpx.AsyncClient, section: SectionKeys, field: str) -> None:
    r = await _post(api, section, {field: "a/b"}, {"name": "x", "properties": {}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"][:3] == ["body", "user", field] and "/" in detail["msg"], r.json()


async def test_a_stored_quantity_summed_past_the_bound_does_not_break_later_events(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Add-to-carts without a `cart` add up their quantities in the stored cart, past the wire bound:
    the cart read back must not be held to it (every later event of the user would fail)."""
    event = add_to_cart("sku-1")
    del event["properties"]["cart"]
    event["properties"]["quantity"] = 1e24
    for _ in range(3):
        r = await _post(api, section, {"dyid": "b4"}, event)
        assert r.status_code == 202, r.text
