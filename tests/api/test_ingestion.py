"""Ingestion: Experience API shapes, validation, consent, and who touches Temporal."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from store.cart_tables import CartEntry
from store.engine import Store
from store.tables import Device, Event, User
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    new_dyid,
    reachable_user,
)


async def test_malformed_events_are_422_naming_the_field(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Bad bodies name their problem; nothing is stored. A body that is no JSON at all is the
    Experience API's 400 "request parse error" (tests/api/test_request_errors.py), not a 422."""
    r = await api.post("/v2/collect/user/event", headers=section.ing, json={
        "user": {"dyid": "1"}, "events": [{"name": "Add", "properties": {"dyType": "add-to-cart-v1", "value": 3}}]})  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:4] == ["body", "events", 0, "properties"], r.json()
    r = await api.post("/v2/collect/user/event", headers=section.ing, json={"user": {}, "events": [{"name": "x"}]})
    assert r.status_code == 422 and "dyid" in r.text
    r = await api.post("/v2/collect/user/event", headers=section.ing, json={"user": {"dyid": "1"}, "events": []})
    assert r.status_code == 422
    r = await api.post("/v2/collect/user/event", headers=section.ing, content=b"{not json")
    assert r.status_code == 400


async def test_ingestion_needs_an_ingestion_key(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """No key 401; a management key 403; header name is case-insensitive."""
    body = {"user": {"dyid": "1"}, "events": [{"name": "x", "properties": {}}]}
    assert (await api.post("/v2/collect/user/event", json=body)).status_code == 401
    assert (await api.post("/v2/collect/user/event", json=body, headers={"dy-api-key": section.management})).status_code == 403
    assert (await api.post("/v2/collect/user/event", json=body, headers={"DY-API-Key": section.ingestion})).status_code == 202


async def test_unmatched_events_never_touch_temporal(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """An event no campaign cares about is stored and needs no dispatch."""
    await create_campaign(api, section, cart_campaign())
    ack = await collect(api, section, new_dyid(), {"name": "Browsed", "properties": {"page": 2}})
    with store.session() as s:
        ev = s.get(Event, ack["event_ids"][0])
    assert ev is not None and ev.dispatched and ev.commands == []


async def test_no_consent_starts_no_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Without active_consent_accepted=true no journey starts (missing counts as no consent)."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    ack = await collect(api, section, dyid, add_to_cart("sku-1"), consent=False)
    assert any(w["code"] == "NO_CONSENT" for w in ack["warnings"])
    with store.session() as s:
        assert s.exec(select(Event).where(Event.id == ack["event_ids"][0])).one().commands == []
    with pytest.raises(RPCError) as err:
        await journey_handle(env.client, section, cid, uid).describe()
    assert err.value.status == RPCStatusCode.NOT_FOUND


async def test_a_first_visit_writes_the_user_once_complete_and_the_device_finds_it_again(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A new device's first request (two cart events) creates one user holding the cart as the
    events left it, with its device and cart index; the next request from the device is that user."""
    dyid = new_dyid()
    both = [("sku-1", 10.0), ("sku-2", 10.0)]
    first = await collect(api, section, dyid, add_to_cart("sku-1"), add_to_cart("sku-2", cart=both))
    again = await collect(api, section, dyid, {"name": "Browsed", "properties": {"page": 1}})
    with store.session() as s:
        device = s.get(Device, (section.id, dyid))
        assert device is not None
        user = s.get(User, device.user_id)
        assert user is not None and [i["productId"] for i in user.cart] == ["sku-1", "sku-2"]
        events = [s.get(Event, e) for e in first["event_ids"] + again["event_ids"]]
        assert all(e is not None and e.user_id == user.id for e in events)
        entries = s.exec(select(CartEntry.sku).where(CartEntry.user_id == user.id)).all()
    assert sorted(entries) == ["sku-1", "sku-2"]
