"""A user ref of the management API that is one user's device id and another user's CUID is a 409
naming both Rejoin ids, on every route that looks a user up by ref; never the device user's answer.

An API-only shop sends `{"user": {"id": "cust-9335603"}}` (dy-api: `id` is "your own user ID", a
device-level id in Rejoin) while another person logged in with cuid `cust-9335603`. Before,
`GET /api/v1/users/cust-9335603` answered the anonymous device user and `DELETE` (GDPR erasure)
erased them with a 200, the CUID holder untouched: the wrong person, irreversibly."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from sqlmodel import select

from store.engine import Store
from store.tables import Device, User
from tests.helpers import SectionKeys, add_integration, add_to_cart, cart_campaign, collect, create_campaign, new_dyid


def _login(cuid: str) -> dict[str, Any]:
    return {"name": "Login", "properties": {"dyType": "login-v1", "cuid": cuid, "cuidType": "id"}}


async def _api_only_visit(api: httpx.AsyncClient, sec: SectionKeys, user: dict[str, Any]) -> None:
    body = {"user": {**user, "active_consent_accepted": True}, "events": [add_to_cart("sku-1")]}
    r = await api.post("/v2/collect/user/event", json=body, headers=sec.ing)
    assert r.status_code == 202, r.text


def _users_of(store: Store, section_id: str, ref: str) -> tuple[str | None, str | None]:
    """(the user whose device `ref` is, the user whose CUID it is), as stored."""
    with store.session() as s:
        device = s.get(Device, (section_id, ref))
        holder = s.exec(select(User).where(User.section_id == section_id, User.cuid == ref)).first()
        return (device.user_id if device else None), (holder.id if holder else None)


async def _two_people_one_ref(api: httpx.AsyncClient, sec: SectionKeys, store: Store) -> tuple[str, str, str]:
    """(ref, the Rejoin id of the user whose device id it is, that of the user whose CUID it is)."""
    ref = f"cust-{secrets.randbelow(10**7)}"
    await _api_only_visit(api, sec, {"id": ref})
    await collect(api, sec, new_dyid(), _login(ref))
    device_user, cuid_user = _users_of(store, sec.id, ref)
    assert device_user and cuid_user and device_user != cuid_user
    return ref, device_user, cuid_user


def _assert_conflict(r: httpx.Response, loc: list[str], *ids: str) -> None:
    assert r.status_code == 409, r.text
    item = r.json()["detail"][0]
    assert item["loc"] == loc, r.text
    assert all(i in item["msg"] for i in ids) and "Rejoin user id" in item["msg"], r.text


async def test_every_user_route_answers_409_naming_both_users(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    ref, device_user, cuid_user = await _two_people_one_ref(api, section, store)
    mgmt = section.mgmt
    path = ["path", "user_ref"]
    _assert_conflict(await api.get(f"/api/v1/users/{ref}", headers=mgmt), path, device_user, cuid_user)
    _assert_conflict(await api.get(f"/api/v1/users/{ref}/journeys", headers=mgmt), path, device_user, cuid_user)
    r = await api.put(f"/api/v1/users/{ref}/test", json={"is_test": True}, headers=mgmt)
    _assert_conflict(r, path, device_user, cuid_user)
    r = await api.patch(f"/api/v1/users/{ref}/attributes", json={"tier": "gold"}, headers=mgmt)
    _assert_conflict(r, path, device_user, cuid_user)
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    r = await api.post(f"/api/v1/campaigns/{cid}/render", json={"user": ref}, headers=mgmt)
    _assert_conflict(r, ["body", "user"], device_user, cuid_user)
    r = await api.post(f"/api/v1/campaigns/{cid}/preview", json={"user": ref}, headers=mgmt)
    _assert_conflict(r, ["body", "user"], device_user, cuid_user)
    # nothing was changed by the refused requests; each person is reached by their Rejoin id
    for uid in (device_user, cuid_user):
        r = await api.get(f"/api/v1/users/{uid}", headers=mgmt)
        assert r.status_code == 200 and r.json()["is_test"] is False and r.json()["attributes"] == {}, r.text


async def test_an_ambiguous_erasure_erases_no_one_and_the_rejoin_id_erases_the_one_meant(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    ref, device_user, cuid_user = await _two_people_one_ref(api, section, store)
    r = await api.delete(f"/api/v1/users/{ref}", headers=section.mgmt)
    _assert_conflict(r, ["path", "user_ref"], device_user, cuid_user)
    assert _users_of(store, section.id, ref) == (device_user, cuid_user)  # both untouched
    r = await api.delete(f"/api/v1/users/{cuid_user}", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["user_id"] == cuid_user, r.text
    assert _users_of(store, section.id, ref) == (device_user, None)
    # only the device user is left for the ref: it is theirs again
    r = await api.get(f"/api/v1/users/{ref}", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["id"] == device_user, r.text


async def test_a_ref_naming_one_user_twice_is_no_conflict(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """The device id and the CUID of the same person (an API-only shop sending both) are that person."""
    ref = f"cust-{secrets.randbelow(10**7)}"
    await _api_only_visit(api, section, {"id": ref, "cuid": ref})
    device_user, cuid_user = _users_of(store, section.id, ref)
    assert device_user is not None and device_user == cuid_user
    r = await api.get(f"/api/v1/users/{ref}", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["id"] == device_user, r.text
