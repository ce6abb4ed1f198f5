"""Experience API bodies a backend really sends, accepted instead of refusing the whole batch:

- ids sent as JSON integers (numeric SKUs, order numbers, customer ids): `productId` (an event's and
  a cart line's), `uniqueTransactionId`, `cuid` (an identification event's and `user.cuid`) and
  `context.page.data` items are read as their decimal strings, every check of the field applying to
  the string; a number with a fraction is refused saying so; `dyid` stays a string (precision);
- an optional list or object sent as `null` (`secondaryIdentifiers`, `context.page.data`, a custom
  event's `properties`) is the same as omitted.
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlmodel import select

from store.engine import Store
from store.tables import Device, Event, User
from tests.helpers import SectionKeys, new_dyid

EVENT = "/v2/collect/user/event"
PAGEVIEW = "/v2/collect/user/pageview"


def _body(dyid: str, *events: dict[str, Any], **user: Any) -> dict[str, Any]:
    return {"user": {"dyid": dyid, "active_consent_accepted": True, **user}, "events": list(events)}


def _user_of(store: Store, section_id: str, dyid: str) -> User:
    with store.session() as s:
        device = s.get(Device, (section_id, dyid))
        assert device is not None
        user = s.get(User, device.user_id)
        assert user is not None
        return user


def _stored(store: Store, event_id: str) -> Event:
    with store.session() as s:
        return s.exec(select(Event).where(Event.id == event_id)).one()


async def test_integer_ids_are_read_as_their_decimal_strings(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    dyid = new_dyid()
    add = {"name": "Add to Cart", "properties": {"dyType": "add-to-cart-v1", "value": 20.0, "productId": 12345,
           "quantity": 1, "cart": [{"productId": 777, "quantity": 1, "itemPrice": 10.0},
                                   {"productId": 12345, "quantity": 1, "itemPrice": 10.0}]}}  # fmt: skip
    login = {"name": "Login", "properties": {"dyType": "login-v1", "cuid": 9335603, "cuidType": "id"}}
    r = await api.post(EVENT, json=_body(dyid, add, login), headers=section.ing)
    assert r.status_code == 202, r.text
    added = _stored(store, r.json()["event_ids"][0]).data
    sent = added["properties"]
    assert sent["productId"] == added["sku"] == "12345" and [i["productId"] for i in sent["cart"]] == ["777", "12345"]
    user = _user_of(store, section.id, dyid)
    assert [i["productId"] for i in user.cart] == ["777", "12345"] and user.cuid == "9335603"
    assert (await api.get("/api/v1/users/9335603", headers=section.mgmt)).json()["id"] == user.id

    order = {"name": "Purchase", "properties": {"dyType": "purchase-v1", "value": 20.0, "uniqueTransactionId": 98765,
             "cart": [{"productId": 777, "quantity": 2, "itemPrice": 10.0}]}}  # fmt: skip
    r = await api.post(EVENT, json=_body(dyid, order), headers=section.ing)
    assert r.status_code == 202, r.text
    stored = _stored(store, r.json()["event_ids"][0])
    assert stored.transaction_id == "98765" and stored.data["properties"]["uniqueTransactionId"] == "98765"

    other = new_dyid()  # the request's own user.cuid
    r = await api.post(EVENT, json=_body(other, {"name": "Visit", "properties": {}}, cuid=4242), headers=section.ing)
    assert r.status_code == 202, r.text
    assert _user_of(store, section.id, other).cuid == "4242"

    view = {"user": {"dyid": new_dyid(), "active_consent_accepted": True},
            "context": {"page": {"type": "PRODUCT", "data": [12345], "location": "/p/12345"}}}  # fmt: skip
    r = await api.post(PAGEVIEW, json=view, headers=section.ing)
    assert r.status_code == 202, r.text
    assert _stored(store, r.json()["event_ids"][0]).data["sku"] == "12345"


async def test_fractions_booleans_and_numeric_dyids_are_still_refused_saying_why(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    base = {"dyType": "add-to-cart-v1", "value": 1.0, "quantity": 1}
    cases: list[tuple[dict[str, Any], list[str | int], str]] = [
        (_body(new_dyid(), {"name": "A", "properties": {**base, "productId": 1.5}}),
         ["body", "events", 0, "properties", "productId"], "decimal point"),
        (_body(new_dyid(), {"name": "A", "properties": {**base, "productId": True}}),
         ["body", "events", 0, "properties", "productId"], "valid string"),
        (_body(new_dyid(), {"name": "P", "properties": {"dyType": "purchase-v1", "value": 1.0, "cart": [],
                                                       "uniqueTransactionId": 10**70}}),
         ["body", "events", 0, "properties", "uniqueTransactionId"], "at most 64 characters"),
        (_body(new_dyid(), {"name": "A", "properties": {**base, "productId": "x", "cart": [{"productId": 2.5}]}}),
         ["body", "events", 0, "properties", "cart", 0, "productId"], "decimal point"),
        ({"user": {"dyid": 4350463893986789401, "active_consent_accepted": True}, "events": [{"name": "V"}]},
         ["body", "user", "dyid"], "JSON string"),
        ({"user": {"dyid_server": 12, "active_consent_accepted": True}, "events": [{"name": "V"}]},
         ["body", "user", "dyid_server"], "JSON string"),
    ]  # fmt: skip
    for body, loc, says in cases:
        r = await api.post(EVENT, json=body, headers=section.ing)
        assert r.status_code == 422, r.text
        item = r.json()["detail"][0]
        assert item["loc"] == loc and says in item["msg"], (loc, r.text)
    view = {"user": {"dyid": new_dyid()}, "context": {"page": {"type": "PRODUCT", "data": [1.5]}}}
    r = await api.post(PAGEVIEW, json=view, headers=section.ing)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "context", "page", "data", 0], r.text


async def test_null_optional_lists_and_objects_are_as_omitted(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    dyid = new_dyid()
    events = [
        {"name": "Login", "properties": {"dyType": "login-v1", "cuid": f"c-{dyid}", "secondaryIdentifiers": None}},
        {"name": "Newsletter", "properties": {"dyType": "newsletter-subscription-v1", "cuid": f"c-{dyid}",
                                              "secondaryIdentifiers": None}},
        {"name": "Wishlist opened", "properties": None},
    ]  # fmt: skip
    body = {**_body(dyid, *events), "context": {"page": {"type": "OTHER", "data": None}}}
    r = await api.post(EVENT, json=body, headers=section.ing)
    assert r.status_code == 202, r.text
    assert _user_of(store, section.id, dyid).cuid == f"c-{dyid}"
    assert _stored(store, r.json()["event_ids"][2]).data["properties"] == {}
    view = {"user": {"dyid": dyid}, "context": {"page": {"type": "HOMEPAGE", "data": None}}}
    r = await api.post(PAGEVIEW, json=view, headers=section.ing)
    assert r.status_code == 202, r.text
    # a PRODUCT page still needs its SKU: null is no SKU
    view["context"] = {"page": {"type": "PRODUCT", "data": None}}
    r = await api.post(PAGEVIEW, json=view, headers=section.ing)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "context", "page", "data"], r.text
