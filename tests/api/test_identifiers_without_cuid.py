"""An identification event without a CUID (a newsletter subscription by phone only) links its phone
and email to the request's user: they were dropped, so a later SMS opt-in of that number never
reached the user. `"type": "phone number"` (one doc's spelling) is a phone too (it was ignored)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from api.ingestion import identity_lock_keys
from domain.events import EventIn, normalize_event, phone_hash
from store.engine import Store
from store.locks import identifier_lock_key
from store.tables import UserIdentifier
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    new_dyid,
    opt_in,
    outbox,
    reachable_user,
    step,
)

PHONE = "+12195551212"


def _newsletter(kind: str, value: str) -> dict[str, Any]:
    return {"name": "Newsletter", "properties": {
        "dyType": "newsletter-subscription-v1", "secondaryIdentifiers": [{"type": kind, "value": value}]}}  # fmt: skip


async def _user_id(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> str:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _phone_holder(store: Store, sec: SectionKeys, phone: str) -> str | None:
    with store.session() as s:
        row = s.get(UserIdentifier, (sec.id, "phone", phone_hash(phone)))
        return row.user_id if row is not None else None


async def test_phone_only_newsletter_subscription_makes_a_later_sms_opt_in_reach_the_user(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section, "sms")
    cid = await create_campaign(api, section, cart_campaign(steps=[step("Text", channels=("sms",))]))
    dyid = new_dyid()
    await collect(api, section, dyid, _newsletter("phoneNumber", PHONE))
    uid = await _user_id(api, section, dyid)
    assert _phone_holder(store, section, PHONE) == uid
    await opt_in(api, section, "sms", "phoneNumber", PHONE)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await env.fast_forward(journey_handle(env.client, section, cid, uid))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed", result
    assert [m["recipient"] for m in await outbox(api, section)] == [PHONE]


async def test_phone_number_type_spelled_with_a_space_is_a_phone(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    dyid = new_dyid()
    await collect(api, section, dyid, _newsletter("phone number", "+1 (219) 555-1213"))
    assert _phone_holder(store, section, "+12195551213") == await _user_id(api, section, dyid)


async def test_hashed_phone_and_secondary_email_without_cuid_are_linked(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    dyid = new_dyid()
    event = _newsletter("hashedPhoneNumber", phone_hash("+12195551214").upper())
    event["properties"]["secondaryIdentifiers"].append({"type": "email", "value": "news@example.com"})
    await collect(api, section, dyid, event)
    uid = await _user_id(api, section, dyid)
    with store.session() as s:
        kinds = {i.kind for i in s.exec(select(UserIdentifier).where(UserIdentifier.user_id == uid)).all()}
    assert kinds == {"phone", "email"}
    assert _phone_holder(store, section, "+12195551214") == uid


async def test_a_phone_an_identified_person_holds_stays_theirs(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A number typed into a form on another device is no proof of being that person."""
    await add_integration(api, section)
    await add_integration(api, section, "sms")
    _, person = await reachable_user(api, section, phone=PHONE)
    await collect(api, section, new_dyid(), _newsletter("phoneNumber", PHONE))
    assert _phone_holder(store, section, PHONE) == person


async def test_a_phone_an_anonymous_user_holds_moves_to_the_latest_subscriber(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    await collect(api, section, new_dyid(), _newsletter("phoneNumber", PHONE))
    dyid = new_dyid()
    await collect(api, section, dyid, _newsletter("phoneNumber", PHONE))
    assert _phone_holder(store, section, PHONE) == await _user_id(api, section, dyid)


def test_identifiers_without_cuid_are_locked() -> None:
    """On PostgreSQL the identifiers such an event writes are locked as an identification's are:
    two requests linking one new phone at once must not both insert it (a duplicate-key 500)."""
    ev = normalize_event(0, EventIn.model_validate(_newsletter("phoneNumber", PHONE)))
    assert ev.identity is None and ev.identifiers == [("phone", phone_hash(PHONE))]
    keys = identity_lock_keys("sec_1", "dev-1", None, [ev])
    assert identifier_lock_key("sec_1", "phone", phone_hash(PHONE)) in keys
