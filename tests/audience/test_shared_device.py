"""A shared device: a person not seen before logging in on it gets a user of their own (the previous person
keeps their CUID, identifiers and journeys), and a secondary email never replaces the primary one."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import UserIdentifier
from tests.helpers import (
    SectionKeys,
    add_integration,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    login,
    new_dyid,
    opt_in,
    outbox,
    step,
)

SUPPORT = "Called support"


def _h(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()


def _support_campaign() -> dict[str, Any]:
    """Sends one email as soon as the custom event `SUPPORT` arrives (no step wait)."""
    return cart_campaign(name="Support", type="custom_trigger", trigger={"wait": "PT5M", "event_name": SUPPORT},
                         variations=[{"id": "a", "name": "A", "share": 100, "steps": [step("Hi")]}])  # fmt: skip


def _support() -> dict[str, Any]:
    return {"name": SUPPORT, "properties": {}}


async def _user(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _emails_of(store: Store, user_id: str) -> set[str]:
    with store.session() as s:
        rows = s.exec(select(UserIdentifier).where(UserIdentifier.user_id == user_id, UserIdentifier.kind == "email"))
        return {i.value_hash for i in rows.all()}


async def _sent_to(api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, cid: str, uid: str) -> list[str]:
    """Runs the user's journey to its end and returns the outbox recipients."""
    await env.fast_forward(journey_handle(env.client, sec, cid, uid))
    result = await journey_result(env.client, sec, cid, uid)
    assert result.status == "completed", result
    return [m["recipient"] for m in await outbox(api, sec)]


async def _shared_device(api: httpx.AsyncClient, sec: SectionKeys, bob_opted_in: bool) -> tuple[str, str, str]:
    """alice@ then bob@ (never seen before) log in on one device, then bob calls support.
    Returns (campaign id, alice's user id, the device's user id)."""
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, _support_campaign())
    await opt_in(api, sec, "email", "email", "alice@example.com")
    if bob_opted_in:
        await opt_in(api, sec, "email", "email", "bob@example.com")
    dyid = new_dyid()
    await collect(api, sec, dyid, login("alice@example.com"))
    alice = (await _user(api, sec, dyid))["id"]
    await collect(api, sec, dyid, login("bob@example.com"), _support())
    return cid, str(alice), str((await _user(api, sec, dyid))["id"])


async def test_new_person_on_shared_device_gets_own_user_and_own_message(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    cid, alice, device_user = await _shared_device(api, section, bob_opted_in=True)
    assert device_user != alice
    assert (await _user(api, section, _h("alice@example.com")))["id"] == alice
    assert (await _user(api, section, _h("bob@example.com")))["id"] == device_user
    assert _emails_of(store, alice) == {_h("alice@example.com")}
    assert _emails_of(store, device_user) == {_h("bob@example.com")}
    assert await _sent_to(api, env, section, cid, device_user) == ["bob@example.com"]


async def test_new_person_not_opted_in_gets_nothing_and_never_the_previous_persons_message(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    cid, alice, device_user = await _shared_device(api, section, bob_opted_in=False)
    assert device_user != alice
    assert await _sent_to(api, env, section, cid, device_user) == []


async def _collect_as(api: httpx.AsyncClient, sec: SectionKeys, dyid: str, cuid: str, *events: dict[str, Any]) -> None:
    user = {"dyid": dyid, "cuid": cuid, "cuidType": "id", "active_consent_accepted": True}
    r = await api.post("/v2/collect/user/event", json={"user": user, "events": list(events)}, headers=sec.ing)
    assert r.status_code == 202, r.text


async def test_request_cuid_of_new_person_on_shared_device_leaves_previous_person(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    dyid = new_dyid()
    await _collect_as(api, section, dyid, "carol", _support())
    carol = await _user(api, section, "carol")
    await _collect_as(api, section, dyid, "dave", _support())
    dave = await _user(api, section, "dave")
    assert carol["id"] != dave["id"]
    assert (await _user(api, section, "carol"))["cuid"] == "carol"
    assert (await _user(api, section, dyid))["id"] == dave["id"]


async def test_same_person_under_another_cuid_stays_one_user(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Not a newcomer: the device's user already holds the hashed email it now identifies with."""
    dyid = new_dyid()
    email_h = _h("erin@example.com")
    await collect(api, section, dyid, {"name": "Login", "properties": {
        "dyType": "login-v1", "cuid": "ext-erin", "cuidType": "id", "hashedEmail": email_h}})  # fmt: skip
    erin = (await _user(api, section, dyid))["id"]
    await collect(api, section, dyid, login("erin@example.com"))
    assert (await _user(api, section, dyid))["id"] == erin


async def test_secondary_email_does_not_replace_primary_hashed_email(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, _support_campaign())
    await opt_in(api, section, "email", "email", "prim@example.com")
    dyid = new_dyid()
    secondary = [{"type": "email", "value": "work@example.com"}, {"type": "phoneNumber", "value": "+15551237777"}]
    event = {"name": "Login", "properties": {
        "dyType": "login-v1", "hashedEmail": _h("prim@example.com"), "secondaryIdentifiers": secondary}}  # fmt: skip
    await collect(api, section, dyid, event, _support())
    uid = str((await _user(api, section, dyid))["id"])
    assert _emails_of(store, uid) == {_h("prim@example.com")}
    assert await _sent_to(api, env, section, cid, uid) == ["prim@example.com"]
