"""A `dyType` naming no standard schema (a typo, wrong case: `Add-To-Cart-v1`) is stored as a custom
event, as before, but the 202 now says so (`UNKNOWN_DYTYPE`): it silently lost cart abandonment."""

from __future__ import annotations

from typing import Any

import httpx
from sqlmodel import select

from store.engine import Store
from store.tables import Event, Journey
from tests.helpers import SectionKeys, add_to_cart, cart_campaign, collect, create_campaign, new_dyid


def _retyped(dy_type: str) -> dict[str, Any]:
    event = add_to_cart("sku-1")
    event["properties"]["dyType"] = dy_type
    return event


async def test_miscased_dytype_is_stored_as_custom_with_a_warning_naming_the_known_type(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    cid = await create_campaign(api, section, cart_campaign())
    ack = await collect(api, section, new_dyid(), add_to_cart("sku-0"), _retyped("Add-To-Cart-v1"))
    [warning] = [w for w in ack["warnings"] if w["code"] == "UNKNOWN_DYTYPE"]
    assert warning["field"] == "events.1.properties.dyType"
    assert "'Add-To-Cart-v1'" in warning["message"] and "did you mean 'add-to-cart-v1'" in warning["message"]
    with store.session() as s:
        ev = s.get(Event, ack["event_ids"][1])
        assert ev is not None and ev.kind == "custom"
        assert len(s.exec(select(Journey).where(Journey.campaign_id == cid)).all()) == 1  # the first event's


async def test_made_up_dytype_warns_without_a_suggestion(api: httpx.AsyncClient, section: SectionKeys) -> None:
    ack = await collect(api, section, new_dyid(), {"name": "x", "properties": {"dyType": "made-up-v9"}})
    assert ack["accepted"] == 1
    [warning] = [w for w in ack["warnings"] if w["code"] == "UNKNOWN_DYTYPE"]
    assert warning["field"] == "events.0.properties.dyType" and "did you mean" not in warning["message"]


async def test_close_spelling_is_suggested(api: httpx.AsyncClient, section: SectionKeys) -> None:
    ack = await collect(api, section, new_dyid(), {"name": "x", "properties": {"dyType": "add_to_cart-v1"}})
    [warning] = [w for w in ack["warnings"] if w["code"] == "UNKNOWN_DYTYPE"]
    assert "did you mean 'add-to-cart-v1'" in warning["message"]


async def test_known_and_absent_dytypes_do_not_warn(api: httpx.AsyncClient, section: SectionKeys) -> None:
    wish = {"name": "Wish", "properties": {"dyType": "add-to-wishlist-v1", "productId": "sku-1"}}
    ack = await collect(api, section, new_dyid(), add_to_cart("sku-1"), {"name": "Custom", "properties": {}}, wish)
    assert ack["warnings"] == [], ack


async def test_a_currency_that_is_no_iso_code_is_kept_with_a_warning(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """`"€"` or `"EURO"` is stored as given (its revenue reported apart) and the 202 says so; a code
    in any case (`"eur"`) is one and warns nothing."""
    from tests.helpers import purchase

    odd = [purchase([("sku-1", 10.0)]) for _ in range(3)]
    for event, currency in zip(odd, ("€", "EURO", "eur"), strict=True):
        event["properties"]["currency"] = currency
    ack = await collect(api, section, new_dyid(), *odd)
    assert ack["accepted"] == 3
    warned = [(w["field"], w["code"]) for w in ack["warnings"] if w["code"] == "CURRENCY_NOT_ISO_4217"]
    assert warned == [("events.0.properties.currency", "CURRENCY_NOT_ISO_4217"),
                      ("events.1.properties.currency", "CURRENCY_NOT_ISO_4217")], ack  # fmt: skip
