"""Triggers' and exits' conditions read an event's properties as the backend sent them, while the
stored event keeps only hashes (docs/security.md, "Raw event retention"), and the stored event
hashes exactly what identified the user, no more (one rule, `domain/events.py`).

A re-probe trial found that since stored events keep hashes, a custom trigger or exit on an
identification event no longer matched a condition on `cuid`, `cuidType` or `phoneNumber` (the
hashing rewrote the properties the conditions read); and that a cuidType `phone` or `e-mail` was
stored hashed (`hashedPhoneNumber`, `he`) while the user kept the clear CUID and no such identity."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from domain.events import EventIn, email_hash, normalize_event, phone_hash
from store.engine import Store
from store.tables import Device, Event, User, UserIdentifier
from tests.helpers import (
    SectionKeys,
    add_integration,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    new_dyid,
    opt_in,
)

EMAIL = "Carol.Sent@Example.com"
PHONE = "+1 555 444 3333"


def _signup(**props: Any) -> dict[str, Any]:
    return {"name": "Signup", "properties": {"dyType": "signup-v1", **props}}


def _custom(name: str, conditions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    trigger = {"wait": "PT1H", "event_name": name, "conditions": conditions}
    return cart_campaign(f"On {name} {conditions}", type="custom_trigger", trigger=trigger, **extra)


def _row(store: Store, ack: dict[str, Any]) -> Event:
    with store.session() as s:
        ev = s.get(Event, ack["event_ids"][0])
    assert ev is not None
    return ev


@pytest.mark.parametrize(
    "condition",
    [
        {"field": "cuidType", "op": "eq", "value": "email"},
        {"field": "cuid", "op": "contains", "value": "@"},
        {"field": "phoneNumber", "op": "eq", "value": PHONE},
    ],
)
async def test_a_custom_trigger_on_an_identification_event_reads_what_was_sent(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, condition: dict[str, Any]
) -> None:
    cid = await create_campaign(api, section, _custom("Signup", [condition]))
    ack = await collect(api, section, new_dyid(), _signup(cuid=EMAIL, cuidType="email", phoneNumber=PHONE))
    row = _row(store, ack)
    assert [(c["campaign_id"], c["action"]) for c in row.commands] == [(cid, "trigger")], row.commands
    # The stored event keeps hashes only, and so does the journey's start input (Temporal's payload).
    props = row.data["properties"]
    assert (props["cuid"], props["cuidType"]) == (email_hash(EMAIL), "he")
    assert props["hashedPhoneNumber"] == phone_hash(PHONE) and "phoneNumber" not in props
    stored = json.dumps([row.data, row.commands]).lower()
    assert EMAIL.lower() not in stored and "555 444" not in stored and "5554443333" not in stored


async def test_the_journey_it_starts_carries_no_address_to_temporal(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Matched on the email as sent, the journey runs and sends, and its whole Temporal history
    (start input, activity payloads, results) names the user by id, never by the address."""
    await add_integration(api, section)
    email = f"carol.{new_dyid()}@example.com"
    await opt_in(api, section, "email", "email", email)
    cid = await create_campaign(api, section, _custom("Signup", [{"field": "cuid", "op": "contains", "value": "@"}]))
    dyid = new_dyid()
    await collect(api, section, dyid, _signup(cuid=email, cuidType="email"))
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    uid = str(r.json()["id"])
    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    history = (await journey_handle(env.client, section, cid, uid).fetch_history()).to_json()
    payloads = re.findall(r'"data": "([^"]+)"', history)
    decoded = " ".join(base64.b64decode(b).decode("utf-8", "replace") for b in payloads)
    assert uid in decoded and email not in (decoded + history).lower()


async def test_a_custom_exit_on_an_identification_event_reads_what_was_sent(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    on_email = [{"field": "cuidType", "op": "eq", "value": "email"}]
    exits = [{"event": "custom", "event_name": "Signup", "conditions": on_email}]
    cid = await create_campaign(api, section, _custom("Browse", [], exits=exits))
    ack = await collect(api, section, new_dyid(), _signup(cuid=EMAIL, cuidType="email"))
    commands = _row(store, ack).commands
    assert [(c["campaign_id"], c["action"], c["reason"]) for c in commands] == [(cid, "exit", "custom:Signup")]


def test_the_stored_form_is_dumped_and_the_sent_one_is_not() -> None:
    sent = {"dyType": "login-v1", "cuid": EMAIL, "cuidType": "email"}
    ev = normalize_event(0, EventIn(name="Login", properties=sent))
    assert ev.sent_properties == sent and ev.properties["cuid"] == email_hash(EMAIL)
    assert EMAIL not in json.dumps(ev.model_dump(mode="json"))
    # Read back from the store there is only the kept form, which conditions then read.
    again = type(ev).model_validate(ev.model_dump(mode="json"))
    assert again.sent_properties == again.properties == ev.properties


@pytest.mark.parametrize("cuid_type", ["phone", "phoneNumber", "e-mail", "plain_text_email"])
async def test_the_stored_cuid_is_the_users_cuid(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, cuid_type: str
) -> None:
    """Only cuidType email / plainTextEmail (any case) is an email CUID, for the user's identity and the
    stored event alike: another spelling is a custom CUID, kept as sent in both (the user's CUID
    predates this rule; hashing it now would make their next login another person)."""
    cuid = PHONE if "phone" in cuid_type.lower() else EMAIL
    dyid = new_dyid()
    ack = await collect(api, section, dyid, _signup(cuid=cuid, cuidType=cuid_type))
    props = _row(store, ack).data["properties"]
    with store.session() as s:
        device = s.get(Device, (section.id, dyid))
        assert device is not None
        user = s.get(User, device.user_id)
        assert user is not None
        kinds = {i.kind for i in s.exec(select(UserIdentifier).where(UserIdentifier.user_id == user.id)).all()}
    assert (props["cuid"], props["cuidType"]) == (user.cuid, user.cuid_type) == (cuid, cuid_type)
    assert kinds == {"custom"}


async def test_a_secondary_identifier_is_hashed_only_when_it_is_linked(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A secondary `phone` (not `phoneNumber`) links no phone, so it is not stored as one either."""
    secondary = [{"type": "phone", "value": PHONE}, {"type": "Phone_Number", "value": "+15550001111"}]
    ack = await collect(api, section, new_dyid(), _signup(cuid="cust-9", secondaryIdentifiers=secondary))
    assert _row(store, ack).data["properties"]["secondaryIdentifiers"] == [
        {"type": "phone", "value": PHONE},
        {"type": "hashedPhoneNumber", "value": phone_hash("+15550001111")},
    ]
    with store.session() as s:
        assert s.get(UserIdentifier, (section.id, "phone", phone_hash("+15550001111"))) is not None
        assert s.get(UserIdentifier, (section.id, "phone", phone_hash(PHONE))) is None
