"""A request's `dyid_server` (the server-set copy of `_dyid`, which outlives Safari's 7-day cap on
script cookies) that differs from its `dyid` (the script cookie was reset to a new value): both name
one browser. Only `dyid` was registered, so the person's cart and journey sat under the script
cookie's user, and the server cookie (or the reset script cookie's new value) was a new, empty user."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlmodel import func, select

from api.ingestion import identity_lock_keys
from store.engine import Store
from store.locks import device_lock_key
from store.tables import Device, Event, User
from tests.helpers import SectionKeys, add_integration, add_to_cart, cart_campaign, create_campaign
from workflows.ids import journey_workflow_id


def _key() -> str:
    return f"d-{uuid.uuid4().hex[:10]}"


async def _post(api: httpx.AsyncClient, sec: SectionKeys, user: dict[str, Any], *events: dict[str, Any]) -> Any:
    body = {"user": {**user, "active_consent_accepted": True}, "events": list(events)}
    r = await api.post("/v2/collect/user/event", json=body, headers=sec.ing)
    assert r.status_code == 202, r.text
    return r.json()


async def _user(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _trigger(store: Store, event_id: str) -> dict[str, Any]:
    with store.session() as s:
        ev = s.get(Event, event_id)
        assert ev is not None
        [command] = [c for c in ev.commands if c["action"] == "trigger"]
        return dict(command)


def _owner(store: Store, section_id: str, key: str) -> str | None:
    with store.session() as s:
        device = s.get(Device, (section_id, key))
        return device.user_id if device is not None else None


async def test_a_cart_under_differing_keys_is_one_user_found_by_either(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    dyid, server = _key(), _key()
    await _post(api, section, {"dyid": dyid, "dyid_server": server}, add_to_cart("sku-1"))
    await _post(api, section, {"dyid_server": server}, {"name": "Browsed", "properties": {}})
    by_dyid, by_server = await _user(api, section, dyid), await _user(api, section, server)
    assert by_dyid["id"] == by_server["id"]
    assert [i["productId"] for i in by_server["cart"]] == ["sku-1"]


async def test_a_reset_script_cookie_finds_the_person_by_the_server_cookie(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """The usual history: equal cookies for a while, then the script cookie gets a new value."""
    old, new = _key(), _key()
    await _post(api, section, {"dyid": old, "dyid_server": old}, add_to_cart("sku-1"))
    ack = await _post(api, section, {"dyid": new, "dyid_server": old}, {"name": "Browsed", "properties": {}})
    person = (await _user(api, section, old))["id"]
    assert (await _user(api, section, new))["id"] == person
    with store.session() as s:
        [event] = ack["event_ids"]
        stored = s.get(Event, event)
        assert stored is not None and stored.user_id == person
        users = s.exec(select(func.count()).select_from(User).where(User.section_id == section.id)).one()
    assert users == 1


async def test_a_journey_started_under_dyid_is_retriggered_by_the_server_cookie_alone(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, server = _key(), _key()
    first = await _post(api, section, {"dyid": dyid, "dyid_server": server}, add_to_cart("sku-1"))
    person = (await _user(api, section, dyid))["id"]
    started = _trigger(store, first["event_ids"][0])
    assert started["workflow_id"] == journey_workflow_id(section.id, cid, person)
    assert started["input"]["enrollment"] is not None
    grown = add_to_cart("sku-2", cart=[("sku-1", 10), ("sku-2", 10)])
    again = await _post(api, section, {"dyid_server": server}, grown)
    retrigger = _trigger(store, again["event_ids"][0])
    assert retrigger["workflow_id"] == started["workflow_id"]
    assert retrigger["input"]["enrollment"] is None  # the running journey, not a second one


async def test_a_key_another_user_holds_is_not_stolen(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """Both keys already name different users: the request is the server cookie's user's (the
    durable one) and each key stays with its user."""
    dyid, server = _key(), _key()
    await _post(api, section, {"dyid": dyid}, add_to_cart("sku-a"))
    await _post(api, section, {"dyid": server}, add_to_cart("sku-b"))
    holder_a, holder_b = _owner(store, section.id, dyid), _owner(store, section.id, server)
    assert holder_a and holder_b and holder_a != holder_b
    ack = await _post(api, section, {"dyid": dyid, "dyid_server": server}, {"name": "Browsed", "properties": {}})
    assert (_owner(store, section.id, dyid), _owner(store, section.id, server)) == (holder_a, holder_b)
    with store.session() as s:
        stored = s.get(Event, ack["event_ids"][0])
        assert stored is not None and stored.user_id == holder_b
    # A third key no one holds joins the server cookie's user, not the script cookie's.
    third = _key()
    await _post(api, section, {"dyid": third, "dyid_server": server}, {"name": "Browsed", "properties": {}})
    assert _owner(store, section.id, third) == holder_b
    assert [i["productId"] for i in (await _user(api, section, dyid))["cart"]] == ["sku-a"]


async def test_equal_keys_are_one_device(api: httpx.AsyncClient, section: SectionKeys, store: Store) -> None:
    key = _key()
    await _post(api, section, {"dyid": key, "dyid_server": key}, add_to_cart("sku-1"))
    with store.session() as s:
        devices = s.exec(select(Device.device_key).where(Device.section_id == section.id)).all()
    assert devices == [key]


def test_both_keys_are_locked_and_one_key_stays_one_lock() -> None:
    assert identity_lock_keys("sec_1", ("srv", "js"), None, []) == [
        device_lock_key("sec_1", "srv"), device_lock_key("sec_1", "js"),
    ]  # fmt: skip
    assert identity_lock_keys("sec_1", "js", None, []) == [device_lock_key("sec_1", "js")]


async def test_concurrent_requests_of_the_two_keys_are_one_user(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """PostgreSQL runs them side by side: with only one key locked, a request bringing both and
    one bringing the server cookie alone both inserted its device (a duplicate-key 500) or made two users."""
    pairs = [(_key(), _key()) for _ in range(3)]
    users: list[dict[str, Any]] = []
    for dyid, server in pairs:
        users += [{"dyid": dyid, "dyid_server": server}, {"dyid_server": server}]
    await asyncio.gather(*(_post(api, section, u, add_to_cart("sku-1")) for u in users for _ in range(2)))
    for dyid, server in pairs:
        assert _owner(store, section.id, dyid) == _owner(store, section.id, server) is not None


async def test_erasure_by_either_key_takes_both_devices(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    dyid, server = _key(), _key()
    await _post(api, section, {"dyid": dyid, "dyid_server": server}, add_to_cart("sku-1"))
    r = await api.delete(f"/api/v1/users/{server}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert (_owner(store, section.id, dyid), _owner(store, section.id, server)) == (None, None)
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.status_code == 404, r.text
