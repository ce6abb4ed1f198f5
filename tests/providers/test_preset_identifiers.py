"""Presets refuse identifier types their recipients are not, Klaviyo's profile field follows the
channel, and a VAPID key must really be a P-256 private key: all 422s naming the field, on save."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from providers.registry import ProviderRegistry
from providers.webpush import P256_ORDER, b64url
from tests.helpers import SectionKeys
from tests.provider_server import ProviderServer, Reply
from tests.providers.keys import ec_key, pem, rsa_key, service_account
from tests.providers.util import message

WEBPUSH = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
TWILIO = {"account_sid": "AC0123456789abcdef", "auth_token": "tw-secret", "sender": "Shop"}
APNS = {"team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": pem(ec_key()), "topic": "com.shop.app"}


def fcm() -> dict[str, Any]:
    return {"service_account": service_account("https://oauth2.googleapis.com/token")}


def body(channel: str, kind: str, identifier_type: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"channel": channel, "name": kind, "kind": kind, "identifier_type": identifier_type, "config": config}


async def create(api: httpx.AsyncClient, sec: SectionKeys, *args: Any) -> httpx.Response:
    """POST an integration built by `body(*args)`."""
    return await api.post("/api/v1/integrations", json=body(*args), headers=sec.mgmt)


MISMATCHES = [
    ("web_push", "webpush", "email", WEBPUSH),
    ("web_push", "webpush", "phone", WEBPUSH),
    ("sms", "twilio", "email", TWILIO),
    ("sms", "twilio", "custom", TWILIO),
    ("app_push", "apns", "email", APNS),
    ("app_push", "apns", "phone", APNS),
    ("app_push", "fcm", "email", None),
    ("app_push", "fcm", "phone", None),
    ("email", "smtp", "phone", {"host": "smtp.shop.example", "from_email": "shop@shop.example"}),
]


@pytest.mark.parametrize(("channel", "kind", "identifier_type", "config"), MISMATCHES)
async def test_preset_refuses_an_identifier_type_its_recipient_is_not(
    api: httpx.AsyncClient, section: SectionKeys, channel: str, kind: str, identifier_type: str,
    config: dict[str, Any] | None,
) -> None:  # fmt: skip
    r = await create(api, section, channel, kind, identifier_type, config or fcm())
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "identifier_type"] and kind in r.json()["error"], r.json()


async def test_update_cannot_switch_a_preset_to_a_wrong_identifier_type(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """The same rule on PUT: a Web Push integration stays `custom`; the stored row is unchanged."""
    r = await create(api, section, "web_push", "webpush", "custom", WEBPUSH)
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    wrong = body("web_push", "webpush", "email", WEBPUSH)
    r = await api.put(f"/api/v1/integrations/{iid}", json=wrong, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "identifier_type"], r.text
    assert (await api.get(f"/api/v1/integrations/{iid}", headers=section.mgmt)).json()["identifier_type"] == "custom"


async def test_klaviyo_profile_field_follows_the_channel(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """SMS defaults to phone_number and refuses email; email keeps email; the identifier type matches the field."""
    r = await create(api, section, "sms", "klaviyo", "phone", {"api_key": "pk_1", "profile_field": "email"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "profile_field"], r.text
    r = await create(api, section, "sms", "klaviyo", "email", {"api_key": "pk_1"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "identifier_type"], r.text
    r = await create(api, section, "sms", "klaviyo", "phone", {"api_key": "pk_1"})
    assert r.status_code == 201 and r.json()["config"]["profile_field"] == "phone_number", r.text
    r = await create(api, section, "email", "klaviyo", "email", {"api_key": "pk_1"})
    assert r.status_code == 201 and r.json()["config"]["profile_field"] == "email", r.text


async def test_klaviyo_sms_send_names_the_phone_number(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """A configuration without profile_field sends an SMS recipient as the profile's phone_number."""
    fresh_provider.default("/api/events", Reply(202, ""))
    cfg = {"api_key": "pk_123", "base_url": fresh_provider.url()}
    await registry.for_kind("klaviyo").send(message(cfg, {"body": "hi"}, channel="sms", recipient="+15551234567"))
    attrs = fresh_provider.to("/api/events")[0].json()["data"]["attributes"]
    assert attrs["profile"]["data"]["attributes"] == {"phone_number": "+15551234567"}


def _raw(scalar: int, size: int = 32) -> str:
    return b64url(scalar.to_bytes(size, "big"))


BAD_VAPID_KEYS = [
    "notakey",
    "not a key at all!",
    _raw(7, 31),  # 31 bytes
    _raw(7, 33),  # 33 bytes
    _raw(0),  # zero is no private key
    _raw(P256_ORDER),  # beyond the group order
    pem(rsa_key()),
    pem(ec.generate_private_key(ec.SECP384R1())),
    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
]


@pytest.mark.parametrize("key", BAD_VAPID_KEYS)
async def test_vapid_key_must_be_a_p256_private_key(api: httpx.AsyncClient, section: SectionKeys, key: str) -> None:
    r = await create(api, section, "web_push", "webpush", "custom", {**WEBPUSH, "vapid_private_key": key})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "config", "vapid_private_key"], r.json()


async def test_raw_vapid_key_of_32_bytes_is_accepted(api: httpx.AsyncClient, section: SectionKeys) -> None:
    raw = _raw(ec_key().private_numbers().private_value)
    r = await create(api, section, "web_push", "webpush", "custom", {**WEBPUSH, "vapid_private_key": raw})
    assert r.status_code == 201, r.text
