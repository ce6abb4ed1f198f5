"""Opt-in values a send could never use are refused on the way in: Web Push subscriptions are
checked, phone numbers are stored in E.164 whatever way they were written (opt-in API, opt-out,
login secondary identifiers), so the same phone is one identifier."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import select

from domain.hashing import phone_hash
from domain.identifiers import check_web_push_subscription, normalize_phone
from providers.webpush import b64url
from store.engine import Store
from store.reachability import reach
from store.tables import Event, OptIn
from tests.helpers import SectionKeys, add_integration, app_state, collect, login, new_dyid
from tests.providers.keys import ec_key, pem


def subscription(endpoint: str = "https://push.example/send/abc") -> dict[str, Any]:
    """A browser PushSubscription's JSON (keys of the right sizes, as PushManager.subscribe() gives)."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    keys = {"p256dh": b64url(point), "auth": b64url(os.urandom(16))}
    return {"endpoint": endpoint, "expirationTime": None, "keys": keys}


def without(sub: dict[str, Any], key: str) -> dict[str, Any]:
    return {**sub, "keys": {k: v for k, v in sub["keys"].items() if k != key}}


BAD_SUBSCRIPTIONS = [
    "not-a-subscription",
    json.dumps({"endpoint": "https://push.example/send/abc"}),  # no keys
    json.dumps(without(subscription(), "auth")),
    json.dumps(without(subscription(), "p256dh")),
    json.dumps({**subscription(), "endpoint": "ftp://push.example/x"}),
    json.dumps({**subscription(), "keys": {"p256dh": "not base64!", "auth": b64url(os.urandom(16))}}),
    json.dumps({**subscription(), "keys": {**subscription()["keys"], "auth": b64url(b"short")}}),
    json.dumps([1, 2]),
]


async def _opt(
    api: httpx.AsyncClient, sec: SectionKeys, channel: str, action: str, id_type: str, value: str
) -> httpx.Response:
    body = {"identifier": {"type": id_type, "value": value}}
    return await api.post(f"/v2/userdata/channels/{channel}/{action}", json=body, headers=sec.ing)


async def _web_push(api: httpx.AsyncClient, sec: SectionKeys) -> None:
    config = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    await add_integration(api, sec, "web_push", kind="webpush", identifier_type="custom", config=config)


def _opt_ins(store: Store, sec: SectionKeys, channel: str) -> list[OptIn]:
    with store.session() as s:
        return list(s.exec(select(OptIn).where(OptIn.section_id == sec.id, OptIn.channel == channel)).all())


async def test_web_push_opt_in_api_refuses_what_is_not_a_subscription(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """Each malformed subscription is a 422 naming identifier.value, and nothing is stored; a real one is opted in."""
    await _web_push(api, section)
    for bad in BAD_SUBSCRIPTIONS:
        r = await _opt(api, section, "web_push", "opt-in", "custom", bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "identifier", "value"], r.json()
    assert _opt_ins(store, section, "web_push") == []
    r = await _opt(api, section, "web_push", "opt-in", "custom", json.dumps(subscription()))
    assert r.status_code == 200 and r.json()["status"] == "opted_in", r.text


@pytest.mark.parametrize("key", ["pushID", "pushId"])
async def test_web_push_opt_in_event_refuses_what_is_not_a_subscription(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, key: str
) -> None:
    """message-optin-v1 for WEB_PUSH: a bad pushID is refused as other invalid events are (422 with
    loc events.i.properties.<field>, nothing stored); app push tokens stay free-form."""
    dyid = new_dyid()
    for bad in BAD_SUBSCRIPTIONS[:3]:
        props = {"dyType": "message-optin-v1", "channelType": "WEB_PUSH", key: bad}
        event = {"name": "Push opt-in", "properties": props}
        body = {"user": {"dyid": dyid, "active_consent_accepted": True},
                "events": [{"name": "Browsed", "properties": {}}, event]}  # fmt: skip
        r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "events", 1, "properties", key], r.json()
    with store.session() as s:
        assert s.exec(select(Event).where(Event.section_id == section.id)).all() == []
    assert _opt_ins(store, section, "web_push") == []
    good = {"dyType": "message-optin-v1", "channelType": "WEB_PUSH", key: json.dumps(subscription())}
    await collect(api, section, dyid, {"name": "Push opt-in", "properties": good})
    app = {"dyType": "message-optin-v1", "channelType": "APP_PUSH", key: "fcm-token-123"}
    await collect(api, section, dyid, {"name": "App opt-in", "properties": app})
    assert len(_opt_ins(store, section, "web_push")) == 1 and len(_opt_ins(store, section, "app_push")) == 1


def test_web_push_subscription_rules() -> None:
    """https endpoint (http only where private URLs are allowed), base64url keys of the right sizes."""
    check_web_push_subscription(json.dumps(subscription()))
    http = json.dumps(subscription("http://127.0.0.1:9/push"))
    with pytest.raises(ValueError, match="https"):
        check_web_push_subscription(http)
    check_web_push_subscription(http, allow_http=True)
    for bad in BAD_SUBSCRIPTIONS:
        with pytest.raises(ValueError):
            check_web_push_subscription(bad, allow_http=True)


@pytest.mark.parametrize("raw", ["+1 555 123 7777", "+1 (555) 123-7777", "+1.555.123.7777", " +15551237777 "])
def test_phone_numbers_normalise_to_e164(raw: str) -> None:
    assert normalize_phone(raw) == "+15551237777"


@pytest.mark.parametrize(
    "raw", ["15551238888", "555-CALL-NOW", "+1 555", "+0 555 123 7777", "+1234567890123456", "", "+"]
)
def test_phone_numbers_that_are_not_e164_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="E.164"):
        normalize_phone(raw)


async def test_sms_opt_in_stores_e164_and_refuses_numbers_without_country_code(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """"+1 555 123 7777" is stored (and later sent) as +15551237777; "15551238888" is a 422 naming
    identifier.value; an opt-out written another way finds the same row."""
    await add_integration(api, section, channel="sms")
    r = await _opt(api, section, "sms", "opt-in", "phoneNumber", "15551238888")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "identifier", "value"], r.text
    assert "E.164" in r.json()["error"]
    assert (await _opt(api, section, "sms", "opt-in", "phoneNumber", "+1 555 123 7777")).status_code == 200
    rows = _opt_ins(store, section, "sms")
    box = app_state(api).box
    assert [(box.decrypt(r.value_enc), r.value_hash, r.opted_in) for r in rows] == [
        ("+15551237777", phone_hash("+15551237777"), True)]  # fmt: skip
    assert (await _opt(api, section, "sms", "opt-out", "phoneNumber", "+1 (555) 123-7777")).status_code == 200
    rows = _opt_ins(store, section, "sms")
    assert len(rows) == 1 and not rows[0].opted_in


async def test_login_phone_in_any_format_reaches_the_opted_in_number(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A login's phoneNumber secondary identifier is normalised as the opt-in was: the user is
    reachable on SMS; a login phone that is not E.164 is a 422 naming the identifier's value."""
    await add_integration(api, section)
    await add_integration(api, section, channel="sms")
    assert (await _opt(api, section, "sms", "opt-in", "phoneNumber", "+44 20 7946 0000")).status_code == 200
    dyid = new_dyid()
    bad = {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": [login("a@example.com", "2079460000")]}
    r = await api.post("/v2/collect/user/event", json=bad, headers=section.ing)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "events", 0, "properties", "secondaryIdentifiers", 0, "value"]
    wrong = {"name": "Login", "properties": {"dyType": "login-v1", "cuid": "c-1", "phoneNumber": "020 7946 0000"}}
    r = await api.post("/v2/collect/user/event", json={**bad, "events": [wrong]}, headers=section.ing)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "phoneNumber", r.text
    await collect(api, section, dyid, login("a@example.com", "+44 (20) 7946-0000"))
    uid = (await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)).json()["id"]
    with store.session() as s:
        assert "sms" in reach(s, section.id, uid, ["sms"]).opt_ins
