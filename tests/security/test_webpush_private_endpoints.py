"""A shopper's Web Push endpoint never reaches an internal host in production settings.

The operator's allow-list (`REJOIN_PRIVATE_URL_ALLOWLIST`) admits internal relays an admin configured;
the registry's one guard applied it to Web Push endpoints too, which shoppers supply (opt-in events
and the userdata API), so an endpoint naming an allow-listed `host:port` was POSTed to. Send time now
ignores the allow-list for Web Push (allowing private URLs altogether, as tests and local dev do,
still applies), and opt-in refuses endpoints spelled as internal addresses or `localhost` (no DNS).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from domain.identifiers import check_web_push_subscription
from providers.base import ConfigurationError
from providers.registry import ProviderRegistry
from settings import Settings
from store.engine import Store
from store.tables import OptIn
from tests.audience.test_optin_validation import subscription
from tests.helpers import add_integration, make_section, new_dyid
from tests.provider_server import ProviderServer, Reply
from tests.providers.clients import outbound
from tests.providers.keys import ec_key, pem
from tests.providers.util import message

VAPID = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
INTERNAL_ENDPOINTS = [
    "https://127.0.0.1/push/x",
    "https://2130706433/push/x",  # 127.0.0.1 as one number
    "https://0/push/x",  # 0.0.0.0
    "https://[::ffff:127.0.0.1]/push/x",
    "https://[::1]:8443/push/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.5/push/x",
    "https://localhost:9000/push/x",
    "https://push.localhost/push/x",
]
PUBLIC_ENDPOINT = "https://fcm.googleapis.com/fcm/send/abc123"


async def test_an_allow_listed_relay_does_not_admit_a_web_push_endpoint(
    store: Store, fresh_provider: ProviderServer
) -> None:
    """The allow-listed host:port still serves the admin's custom HTTP relay; a Web Push endpoint
    naming it is refused before any connection."""
    fresh_provider.default("/relay", Reply(200, {"ok": True}))
    fresh_provider.default("/push/x", Reply(201, ""))
    allowed = [f"127.0.0.1:{fresh_provider.port}"]
    recipient = json.dumps(subscription(fresh_provider.url("/push/x")))
    async with outbound("aiohttp") as http:
        registry = ProviderRegistry(store, http, allow_private_urls=False, allowed_targets=allowed)
        await registry.send("custom_http", message({"url": fresh_provider.url("/relay")}))
        with pytest.raises(ConfigurationError, match="refusing"):
            await registry.send("webpush", message(VAPID, {"t": 1}, channel="web_push", recipient=recipient))
    assert len(fresh_provider.to("/relay")) == 1 and fresh_provider.to("/push/x") == []


async def test_private_urls_allowed_still_reach_a_local_push_service(
    store: Store, fresh_provider: ProviderServer
) -> None:
    """REJOIN_ALLOW_PRIVATE_URLS=true (tests, local dev) keeps local push-service stand-ins working."""
    fresh_provider.default("/push/x", Reply(201, ""))
    recipient = json.dumps(subscription(fresh_provider.url("/push/x")))
    async with outbound("aiohttp") as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        resp = await registry.send("webpush", message(VAPID, {"t": 1}, channel="web_push", recipient=recipient))
    assert resp.status == 201 and len(fresh_provider.to("/push/x")) == 1


@pytest.mark.parametrize("endpoint", INTERNAL_ENDPOINTS)
def test_internal_endpoints_are_not_subscriptions_unless_private_urls_are_allowed(endpoint: str) -> None:
    value = json.dumps(subscription(endpoint))
    with pytest.raises(ValueError, match="public push service"):
        check_web_push_subscription(value)
    check_web_push_subscription(value, allow_http=True)  # local stand-ins


# ------------------------------------------------------------------ opt-in, production settings


@pytest.fixture
async def strict_api(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """The API without REJOIN_ALLOW_PRIVATE_URLS, one internal host:port allow-listed (a relay)."""
    strict = settings.model_copy(update={"allow_private_urls": False, "private_url_allowlist": "127.0.0.1:9000"})
    app = create_app(strict, store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as api:
        yield api


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lookups of push hosts made while the test runs (opt-in must make none)."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if "googleapis" in name or "localhost" in name:
            looked_up.append(name)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


def _web_push_rows(store: Store, section_id: str) -> list[OptIn]:
    with store.session() as s:
        return list(s.exec(select(OptIn).where(OptIn.section_id == section_id, OptIn.channel == "web_push")).all())


async def test_the_opt_in_api_refuses_internal_endpoints(
    strict_api: httpx.AsyncClient, store: Store, no_dns: list[str]
) -> None:
    """A 422 naming identifier.value, nothing stored; a public push service is opted in without a lookup."""
    sec = await make_section(strict_api, "strict-push")
    await add_integration(strict_api, sec, "web_push", kind="webpush", identifier_type="custom", config=VAPID)
    for endpoint in INTERNAL_ENDPOINTS:
        body = {"identifier": {"type": "custom", "value": json.dumps(subscription(endpoint))}}
        r = await strict_api.post("/v2/userdata/channels/web_push/opt-in", json=body, headers=sec.ing)
        assert r.status_code == 422, (endpoint, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "identifier", "value"], r.json()
    assert _web_push_rows(store, sec.id) == []
    body = {"identifier": {"type": "custom", "value": json.dumps(subscription(PUBLIC_ENDPOINT))}}
    r = await strict_api.post("/v2/userdata/channels/web_push/opt-in", json=body, headers=sec.ing)
    assert r.status_code == 200 and r.json()["status"] == "opted_in", r.text
    assert no_dns == []


async def test_the_opt_in_event_refuses_internal_endpoints(
    strict_api: httpx.AsyncClient, store: Store, no_dns: list[str]
) -> None:
    """As other invalid subscriptions in message-optin-v1: a 422 at events.i.properties.pushID, nothing stored."""
    sec = await make_section(strict_api, "strict-push-events")
    dyid = new_dyid()
    for endpoint in INTERNAL_ENDPOINTS:
        body = _opt_in_event(dyid, endpoint, after_browsing=True)
        r = await strict_api.post("/v2/collect/user/event", json=body, headers=sec.ing)
        assert r.status_code == 422, (endpoint, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "events", 1, "properties", "pushID"], r.json()
    assert _web_push_rows(store, sec.id) == []
    r = await strict_api.post("/v2/collect/user/event", json=_opt_in_event(dyid, PUBLIC_ENDPOINT), headers=sec.ing)
    assert r.status_code == 202, r.text
    assert no_dns == []


def _opt_in_event(dyid: str, endpoint: str, after_browsing: bool = False) -> dict[str, Any]:
    props = {"dyType": "message-optin-v1", "channelType": "WEB_PUSH", "pushID": json.dumps(subscription(endpoint))}
    events = [{"name": "Browsed", "properties": {}}] if after_browsing else []
    events.append({"name": "Push opt-in", "properties": props})
    return {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": events}
