"""No plain email, phone number or push token is kept in a stored event's data: an identification
event's `cuid` of type email, its `phoneNumber` and its email/phone secondary identifiers,
and a push opt-in's `pushID`, are stored as the hashes the identity and opt-in rows are keyed by.
They were stored verbatim in `Event.data` for the event retention (a privacy trial's finding), while
docs/api.md says a plain email is hashed on arrival. The person is identified as before."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlmodel import select

from domain.events import EventIn, email_hash, normalize_event, phone_hash
from domain.hashing import push_token_hash
from store.engine import Store
from store.tables import Event, User, UserIdentifier
from tests.helpers import SectionKeys, new_dyid

EMAIL = "Plain.Login@Example.com"
SECOND = "second.addr@example.com"
PHONE = "+15559876543"
SIGNUP_PHONE = "+1 555 222 3333"


def _stored(store: Store, event_id: str) -> dict[str, Any]:
    with store.session() as s:
        ev = s.get(Event, event_id)
    assert ev is not None
    return dict(ev.data)


async def _send(api: httpx.AsyncClient, sec: SectionKeys, dyid: str, *events: dict[str, Any]) -> list[str]:
    body = {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": list(events)}
    r = await api.post("/v2/collect/user/event", json=body, headers=sec.ing)
    assert r.status_code == 202, r.text
    return list(r.json()["event_ids"])


def _in_clear(data: dict[str, Any], *values: str) -> list[str]:
    text = json.dumps(data).lower()
    return [v for v in values if v.lower() in text or v.replace(" ", "").lower() in text]


async def test_a_login_keeps_only_hashes_of_its_email_and_phones(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    dyid = new_dyid()
    login = {"name": "Login", "properties": {
        "dyType": "login-v1", "cuid": EMAIL, "cuidType": "email",
        "secondaryIdentifiers": [{"type": "email", "value": SECOND}, {"type": "phoneNumber", "value": PHONE},
                                 {"type": "custom", "value": "loyalty-42"}]}}  # fmt: skip
    [event_id] = await _send(api, section, dyid, login)
    data = _stored(store, event_id)
    assert _in_clear(data, EMAIL, SECOND, PHONE) == []
    props = data["properties"]
    assert (props["cuid"], props["cuidType"]) == (email_hash(EMAIL), "he")
    assert props["secondaryIdentifiers"] == [
        {"type": "hashedEmail", "value": email_hash(SECOND)},
        {"type": "hashedPhoneNumber", "value": phone_hash(PHONE)},
        {"type": "custom", "value": "loyalty-42"},  # not an email or phone: kept as sent
    ]
    # Identified as before: the CUID is the email's hash, the phone is the user's.
    with store.session() as s:
        user = s.exec(select(User).where(User.section_id == section.id, User.cuid == email_hash(EMAIL))).one()
        held = s.get(UserIdentifier, (section.id, "phone", phone_hash(PHONE)))
    assert held is not None and held.user_id == user.id


async def test_signup_and_newsletter_phones_are_kept_hashed(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    signup = {"name": "Signup", "properties": {
        "dyType": "signup-v1", "cuid": "cust-7", "phoneNumber": SIGNUP_PHONE,
        "secondaryIdentifiers": [{"type": "phone number", "value": PHONE}]}}  # fmt: skip
    newsletter = {"name": "Newsletter", "properties": {
        "dyType": "newsletter-subscription-v1",
        "secondaryIdentifiers": [{"type": "plainTextEmail", "value": SECOND}]}}  # fmt: skip
    ids = await _send(api, section, new_dyid(), signup, newsletter)
    signed, subscribed = (_stored(store, i)["properties"] for i in ids)
    assert _in_clear(signed, SIGNUP_PHONE, PHONE) == [] and _in_clear(subscribed, SECOND) == []
    assert signed["cuid"] == "cust-7"  # an id CUID is no email or phone
    assert "phoneNumber" not in signed and signed["hashedPhoneNumber"] == phone_hash(SIGNUP_PHONE)
    assert signed["secondaryIdentifiers"] == [{"type": "hashedPhoneNumber", "value": phone_hash(PHONE)}]
    assert subscribed["secondaryIdentifiers"] == [{"type": "hashedEmail", "value": email_hash(SECOND)}]
    with store.session() as s:  # the newsletter's email still links to the user
        assert s.get(UserIdentifier, (section.id, "email", email_hash(SECOND))) is not None


async def test_a_push_opt_in_keeps_its_token_only_hashed(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    token = "fcm-token-" + new_dyid()
    opt = {"name": "Push", "properties": {"dyType": "message-optin-v1", "pushID": token, "channelType": "APP_PUSH"}}
    [event_id] = await _send(api, section, new_dyid(), opt)
    data = _stored(store, event_id)
    assert _in_clear(data, token) == []
    assert data["properties"]["pushID"] == push_token_hash("app_push", token)
    with store.session() as s:  # the opt-in row and the user's identifier are keyed as before
        assert s.get(UserIdentifier, (section.id, "app_push", push_token_hash("app_push", token))) is not None


def test_kept_properties_name_the_same_identity_when_normalised_again() -> None:
    props = {"dyType": "login-v1", "cuid": EMAIL, "cuidType": "email", "phoneNumber": SIGNUP_PHONE,
             "secondaryIdentifiers": [{"type": "email", "value": SECOND},
                                      {"type": "phoneNumber", "value": PHONE}]}  # fmt: skip
    first = normalize_event(0, EventIn(name="Login", properties=props))
    again = normalize_event(0, EventIn(name="Login", properties=first.properties))
    assert first.identity is not None and again.identity == first.identity
    assert first.identity.phone_hash == phone_hash(PHONE)  # the secondary phone wins, as before
