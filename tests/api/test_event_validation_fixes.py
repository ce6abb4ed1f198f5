"""Ingestion refuses identifiers and SKUs no send could use, and cart/custom triggers follow the docs:
hashed identifiers are SHA-256 digests, a product page's SKU is 1-256 characters and not blank,
a cart of quantity-0 items is empty, and a custom trigger fires on a standard event of its name."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlmodel import select

from store.engine import Store
from store.tables import Device, Event, User
from tests.helpers import SectionKeys, add_to_cart, cart_campaign, collect, create_campaign, new_dyid, purchase

EMAIL_HASH = hashlib.sha256(b"raw.person@example.com").hexdigest()


async def _post(api: httpx.AsyncClient, sec: SectionKeys, path: str, body: dict[str, Any]) -> httpx.Response:
    return await api.post(f"/v2/collect/user/{path}", json=body, headers=sec.ing)


def _event_body(props: dict[str, Any], user: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"user": user or {"dyid": new_dyid()}, "events": [{"name": "Login", "properties": props}]}


def _loc(r: httpx.Response) -> list[Any]:
    assert r.status_code == 422, r.text
    return list(r.json()["detail"][0]["loc"])


def _commands(store: Store, ack: dict[str, Any]) -> list[dict[str, Any]]:
    with store.session() as s:
        ev = s.get(Event, ack["event_ids"][0])
    assert ev is not None
    return list(ev.commands)


def _user_of(store: Store, sec: SectionKeys, dyid: str) -> User:
    with store.session() as s:
        device = s.get(Device, (sec.id, dyid))
        assert device is not None
        user = s.get(User, device.user_id)
    assert user is not None
    return user


# ---------------------------------------------------------------- hashed identifiers (defect 2)


@pytest.mark.parametrize("value", ["Raw.Person@Example.com", EMAIL_HASH[:63], EMAIL_HASH + "0", "g" * 64])
async def test_a_hashed_email_that_is_no_digest_is_422(
    api: httpx.AsyncClient, section: SectionKeys, value: str
) -> None:
    """A plain email (or anything but 64 hex) as hashedEmail would be kept in clear as the CUID."""
    r = await _post(api, section, "event", _event_body({"dyType": "login-v1", "hashedEmail": value}))
    assert _loc(r) == ["body", "events", 0, "properties", "hashedEmail"]


async def test_a_hashed_email_in_capitals_is_kept_lower_case(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    dyid = new_dyid()
    event = {"name": "Login", "properties": {"dyType": "login-v1", "hashedEmail": EMAIL_HASH.upper()}}
    await collect(api, section, dyid, event)
    assert _user_of(store, section, dyid).cuid == EMAIL_HASH


async def test_an_event_cuid_of_type_he_that_is_no_digest_is_422(api: httpx.AsyncClient, section: SectionKeys) -> None:
    props = {"dyType": "identify-v1", "cuid": "raw.person@example.com", "cuidType": "he"}
    r = await _post(api, section, "event", _event_body(props))
    assert _loc(r) == ["body", "events", 0, "properties", "cuid"]


@pytest.mark.parametrize("cuid_type", ["he", "hashedEmail"])
async def test_a_user_cuid_of_type_he_that_is_no_digest_is_422(
    api: httpx.AsyncClient, section: SectionKeys, cuid_type: str
) -> None:
    user = {"dyid": new_dyid(), "cuid": "Raw.Person@Example.com", "cuidType": cuid_type}
    body = {"user": user, "events": [{"name": "Browsed", "properties": {}}]}
    assert _loc(await _post(api, section, "event", body)) == ["body", "user", "cuid"]


async def test_a_hashed_phone_number_that_is_no_digest_is_422(api: httpx.AsyncClient, section: SectionKeys) -> None:
    props = {"dyType": "login-v1", "hashedEmail": EMAIL_HASH,
             "secondaryIdentifiers": [{"type": "hashedPhoneNumber", "value": "+15551234567"}]}  # fmt: skip
    r = await _post(api, section, "event", _event_body(props))
    assert _loc(r) == ["body", "events", 0, "properties", "secondaryIdentifiers", 0, "value"]


# ---------------------------------------------------------------- custom trigger on a standard event (defect 4)


async def test_a_custom_trigger_fires_on_a_standard_event_of_its_name(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A purchase named "Purchase" starts the custom campaign's journey and still exits the cart journey."""
    trigger = {"wait": "PT1H", "event_name": "Purchase"}
    custom = await create_campaign(api, section, cart_campaign("On purchase", type="custom_trigger", trigger=trigger))
    cart = await create_campaign(api, section, cart_campaign())
    dyid = new_dyid()
    await collect(api, section, dyid, add_to_cart("sku-1"))
    ack = await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
    actions = {(c["campaign_id"], c["action"]) for c in _commands(store, ack)}
    assert (custom, "trigger") in actions and (cart, "exit") in actions, actions


# ---------------------------------------------------------------- quantity-0 carts (defect 6)


def _zero_cart() -> dict[str, Any]:
    return {"name": "Sync Cart", "properties": {"dyType": "sync-cart-v1", "value": 0,
                                               "cart": [{"productId": "sku-shoe", "quantity": 0}]}}  # fmt: skip


async def test_a_cart_of_quantity_0_items_is_empty(api: httpx.AsyncClient, section: SectionKeys, store: Store) -> None:
    """It starts no cart journey, and exits a running one as an emptied cart does."""
    cid = await create_campaign(api, section, cart_campaign())
    fresh = new_dyid()
    commands = _commands(store, await collect(api, section, fresh, _zero_cart()))
    assert [c["action"] for c in commands] == ["exit"], commands  # as any empty cart: no trigger
    assert _user_of(store, section, fresh).cart == []
    dyid = new_dyid()
    await collect(api, section, dyid, add_to_cart("sku-shoe"))
    commands = _commands(store, await collect(api, section, dyid, _zero_cart()))
    assert [(c["campaign_id"], c["action"], c["reason"]) for c in commands] == [(cid, "exit", "cart_emptied")]


# ---------------------------------------------------------------- product page SKUs (defect 7)


@pytest.mark.parametrize("sku", ["   ", "", "s" * 257])
async def test_a_product_page_sku_blank_or_too_long_is_422(
    api: httpx.AsyncClient, section: SectionKeys, sku: str
) -> None:
    body = {"user": {"dyid": new_dyid()}, "context": {"page": {"type": "PRODUCT", "data": [sku]}}}
    assert _loc(await _post(api, section, "pageview", body)) == ["body", "context", "page", "data", 0]


async def test_a_product_page_sku_of_256_characters_is_accepted(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    body = {"user": {"dyid": new_dyid()}, "context": {"page": {"type": "PRODUCT", "data": ["s" * 256]}}}
    r = await _post(api, section, "pageview", body)
    assert r.status_code == 202, r.text
    with store.session() as s:
        assert s.exec(select(Event.kind).where(Event.id == r.json()["event_ids"][0])).one() == "product_view"


# ---------------------------------------------------------------- blank cart SKUs, adding none


@pytest.mark.parametrize(
    ("props", "loc"),
    [
        ({"dyType": "add-to-cart-v1", "value": 1, "productId": "   ", "quantity": 1}, ["productId"]),
        ({"dyType": "sync-cart-v1", "value": 1, "cart": [{"productId": "ok"}, {"productId": " \t"}]},
         ["cart", 1, "productId"]),
    ],
)
async def test_a_blank_cart_product_id_is_422(
    api: httpx.AsyncClient, section: SectionKeys, props: dict[str, Any], loc: list[Any]
) -> None:
    body = {"user": {"dyid": new_dyid()}, "events": [{"name": "Cart", "properties": props}]}
    assert _loc(await _post(api, section, "event", body)) == ["body", "events", 0, "properties", *loc]


async def test_adding_quantity_0_without_a_cart_adds_nothing(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """An add-to-cart of quantity 0 (no cart given) leaves the cart as it was: it used to add one item."""
    dyid = new_dyid()
    await collect(api, section, dyid, add_to_cart("sku-a"))
    zero = {"name": "Add", "properties": {"dyType": "add-to-cart-v1", "value": 0, "productId": "sku-b", "quantity": 0}}
    await collect(api, section, dyid, zero)
    two = {"name": "Add", "properties": {"dyType": "add-to-cart-v1", "value": 2, "productId": "sku-a", "quantity": 2}}
    await collect(api, section, dyid, two)
    assert [(i["productId"], i["quantity"]) for i in _user_of(store, section, dyid).cart] == [("sku-a", 3.0)]
