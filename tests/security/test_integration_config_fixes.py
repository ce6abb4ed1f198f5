"""Security-test findings on integration configuration, through the API and a real journey: no
credentials to another host (redirects, a re-pointed URL keeping masked secrets), headers that
cannot be sent are refused on save and fail cleanly at send, and save-time address checks match
send-time ones (SMTP hosts, URLs with credentials)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from providers.secret_fields import MASK
from settings import Settings
from store.engine import Store
from store.tables import Integration, Send
from tests.helpers import (
    SectionKeys,
    add_to_cart,
    app_state,
    cart_campaign,
    collect,
    create_campaign,
    custom_http_integration,
    journey_result,
    make_section,
    reachable_user,
)
from tests.provider_server import ProviderServer, Reply

SECRET = "TOPSECRET-ABC"
PASSWORD = "LEAKME-PW"


@pytest.fixture
def attacker() -> Iterator[ProviderServer]:
    server = ProviderServer().start()
    yield server
    server.stop()


def body_for(url: str, headers: Any = None, password: str = PASSWORD) -> dict[str, Any]:
    headers = headers if headers is not None else [{"key": "X-Api-Key", "value": SECRET, "secret": True}]
    return custom_http_integration(url, headers, {"type": "basic", "username": "shop", "password": password})


async def create(api: httpx.AsyncClient, sec: SectionKeys, body: dict[str, Any]) -> str:
    r = await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def call_test(api: httpx.AsyncClient, sec: SectionKeys, iid: str) -> dict[str, Any]:
    r = await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {"hi": 1}}, headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dict(r.json())


def loc(r: httpx.Response) -> str:
    """The refused body field, dotted (after the `body` every 422's `loc` starts with)."""
    source, *field = r.json()["detail"][0]["loc"]
    assert source == "body", r.text
    return ".".join(str(p) for p in field)


# ------------------------------------------------------------------ 1. redirects to another host


async def test_the_test_call_refuses_a_redirect_to_another_host(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, attacker: ProviderServer
) -> None:
    """`/test` (httpx): a 307 to another origin is `ok: false` naming it; that host gets nothing."""
    iid = await create(api, section, body_for(fresh_provider.url("/send")))
    fresh_provider.script("/send", Reply(307, "", headers={"Location": attacker.url("/attacker")}))
    result = await call_test(api, section, iid)
    assert result["ok"] is False and result["status"] == 307
    assert f"127.0.0.1:{attacker.port}" in result["error"] and "not followed" in result["error"]
    assert attacker.requests == []


# ------------------------------------------------------------------ 2/4. headers that cannot be sent


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ({"key": "X-Shop", "value": "acme\r\nX-Injected: 1"}, "config.headers.0.value"),
        ({"key": "X-Api-Key", "value": SECRET + "\n", "secret": True}, "config.headers.0.value"),
        ({"key": "Content-Length", "value": "3"}, "config.headers.0.key"),
        ({"key": "host", "value": "evil.example"}, "config.headers.0.key"),
        ({"key": "Transfer-Encoding", "value": "chunked"}, "config.headers.0.key"),
        ({"key": "Connection", "value": "close"}, "config.headers.0.key"),
    ],
)
async def test_unsendable_headers_are_refused_on_save(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, header: dict[str, Any], field: str
) -> None:
    """CR/LF/NUL in a value, and framing or hop headers, are 422s naming the field (create and
    update), with nothing of the value in the answer."""
    body = body_for(fresh_provider.url("/send"), [header])
    r = await api.post("/api/v1/integrations", json=body, headers=section.mgmt)
    assert r.status_code == 422 and loc(r) == field, r.text
    assert SECRET not in r.text and "acme" not in r.text
    iid = await create(api, section, body_for(fresh_provider.url("/send"), []))
    r = await api.put(f"/api/v1/integrations/{iid}", json=body_for(fresh_provider.url("/send"), [header]),
                      headers=section.mgmt)  # fmt: skip
    assert r.status_code == 422 and loc(r) == field, r.text
    assert fresh_provider.requests == []


def store_headers(store: Store, iid: str, public: list[dict[str, Any]], secret: dict[str, Any], box: Any) -> None:
    """Write headers straight into the stored row, as a configuration saved before the save-time rule."""
    with store.session() as s:
        row = s.get(Integration, iid)
        assert row is not None
        row.config = {**row.config, "headers": public}
        stored = json.loads(box.decrypt(row.secrets_enc)) if row.secrets_enc else {}
        row.secrets_enc = box.encrypt(json.dumps({**stored, **secret}))
        s.add(row)


@pytest.mark.parametrize(
    "headers",
    [
        [{"key": "X-Api-Key", "value": MASK, "secret": True}],  # the secret value holds a LF
        [{"key": "Content-Length", "value": "3", "secret": False}],
        [{"key": "host", "value": "evil.example", "secret": False}],
        [{"key": "X-Shop", "value": "acme\r\nX-Injected: 1", "secret": False}],
    ],
)
async def test_a_stored_unsendable_header_fails_the_test_call_cleanly(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, store: Store,
    headers: list[dict[str, Any]],
) -> None:  # fmt: skip
    """A configuration stored before the rule: `/test` answers `ok: false` with a configuration error
    (before: a 500 on Content-Length, 'Found multiple Host headers', the secret value echoed)."""
    iid = await create(api, section, body_for(fresh_provider.url("/send"), []))
    store_headers(store, iid, headers, {"headers.0.value": SECRET + "\n"} if headers[0]["value"] == MASK else {},
                  app_state(api).box)  # fmt: skip
    result = await call_test(api, section, iid)
    assert result["ok"] is False and result["status"] is None, result
    assert result["error"].startswith("configuration:"), result
    assert SECRET not in str(result) and "acme" not in str(result)
    assert fresh_provider.requests == []


async def test_a_journey_through_a_stored_unsendable_header_fails_once_unflagged(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """Delivery (aiohttp): the send fails permanently after one attempt, not flagged a possible duplicate
    (nothing was sent), and the journey ends; before, every attempt raised a bare ValueError, retried
    without end, the send stayed in_flight with possible_duplicate and the journey in 'sending'."""
    path = "/send/" + secrets.token_hex(4)
    iid = await create(api, section, body_for(fresh_provider.url(path), []))
    secret_header = [{"key": "X-Api-Key", "value": MASK, "secret": True}]
    store_headers(store, iid, secret_header, {"headers.0.value": SECRET + "\r\n"}, app_state(api).box)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid, timeout=30)
    assert result.sent == 0
    with store.session() as s:
        send = s.exec(select(Send).where(Send.journey_id == result.journey_id)).one()
    assert (send.status, send.attempts, send.possible_duplicate) == ("failed", 1, False), send
    assert (send.provider_response or "").startswith("configuration:") and SECRET not in (send.provider_response or "")
    assert fresh_provider.to(path) == []


# ------------------------------------------------------------------ 3. masked secrets and a new address


async def test_masked_secrets_are_refused_when_the_address_changes(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, attacker: ProviderServer
) -> None:
    """Re-pointing the URL while sending the masks back is a 422 naming the secret; nothing reaches
    the new host (before: `/test` and deliveries sent the stored X-Api-Key and password there)."""
    iid = await create(api, section, body_for(fresh_provider.url("/send")))
    moved = body_for(attacker.url("/exfil"), [{"key": "X-Api-Key", "value": MASK, "secret": True}], MASK)
    r = await api.put(f"/api/v1/integrations/{iid}", json=moved, headers=section.mgmt)
    assert r.status_code == 422 and loc(r) == "config.headers.0.value", r.text
    assert "re-enter this secret: the integration's address changed" in r.text
    moved["config"]["headers"][0]["value"] = SECRET  # the header re-entered, the password still masked
    r = await api.put(f"/api/v1/integrations/{iid}", json=moved, headers=section.mgmt)
    assert r.status_code == 422 and loc(r) == "config.auth.password", r.text
    r = await api.get(f"/api/v1/integrations/{iid}", headers=section.mgmt)
    assert r.json()["config"]["url"] == fresh_provider.url("/send")
    await call_test(api, section, iid)
    assert attacker.requests == []
    # Every secret re-entered: the move is accepted.
    r = await api.put(f"/api/v1/integrations/{iid}", json=body_for(attacker.url("/exfil")), headers=section.mgmt)
    assert r.status_code == 200, r.text


async def test_masked_secrets_are_kept_when_no_address_changes(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """Renaming or adding a plain header with the masks sent back keeps the stored secrets, as before."""
    iid = await create(api, section, body_for(fresh_provider.url("/send")))
    headers = [{"key": "X-Api-Key", "value": MASK, "secret": True}, {"key": "X-Shop", "value": "acme"}]
    same = body_for(fresh_provider.url("/send"), headers, MASK)
    same["name"] = "Renamed"
    r = await api.put(f"/api/v1/integrations/{iid}", json=same, headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert (await call_test(api, section, iid))["ok"] is True
    assert fresh_provider.to("/send")[-1].headers["x-api-key"] == SECRET


async def test_a_masked_smtp_password_is_refused_when_the_host_changes(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """SMTP: a new host or port, or TLS turned off, with the password masked is a 422 naming `config.password`."""
    cfg = {"host": "smtp.shop.example", "port": 587, "username": "u", "password": PASSWORD,
           "from_email": "a@shop.example"}  # fmt: skip
    body = {"channel": "email", "name": "SMTP", "kind": "smtp", "identifier_type": "email", "config": cfg}
    iid = await create(api, section, body)
    for change in ({"host": "smtp.attacker.example"}, {"port": 2525}, {"security": "none"}):
        moved = {**body, "config": {**cfg, "password": MASK, **change}}
        r = await api.put(f"/api/v1/integrations/{iid}", json=moved, headers=section.mgmt)
        assert r.status_code == 422 and loc(r) == "config.password", r.text
    kept = {**body, "config": {**cfg, "password": MASK, "from_name": "Shop"}}
    r = await api.put(f"/api/v1/integrations/{iid}", json=kept, headers=section.mgmt)
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ 5. save-time address checks


@pytest.fixture
async def strict_api(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """The API without REJOIN_ALLOW_PRIVATE_URLS (one internal host:port allow-listed)."""
    strict = settings.model_copy(
        update={"allow_private_urls": False, "private_url_allowlist": "127.0.0.1:2525"}
    )
    app = create_app(strict, store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as api:
        yield api


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "10.0.0.5", "169.254.169.254", "[::1]"])
async def test_private_smtp_hosts_are_refused_on_save(strict_api: httpx.AsyncClient, host: str) -> None:
    """As custom URLs are: a 422 naming `config.host`, unless the host:port is allow-listed."""
    sec = await make_section(strict_api, "strict-smtp")
    cfg = {"host": host, "port": 587, "from_email": "a@shop.example"}
    body = {"channel": "email", "name": "SMTP", "kind": "smtp", "identifier_type": "email", "config": cfg}
    r = await strict_api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
    assert r.status_code == 422 and loc(r) == "config.host", r.text
    if host == "127.0.0.1":
        body["config"] = {**cfg, "port": 2525}
        r = await strict_api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("url", ["http://user:pw@example.com/send", "http://127.0.0.1:9532@evil.example/send"])
async def test_urls_with_credentials_are_refused_on_save(
    api: httpx.AsyncClient, section: SectionKeys, url: str
) -> None:
    """Credentials belong in the auth configuration; a URL carrying them is a 422 naming the field
    (also with private URLs allowed, since send time refuses them anyway)."""
    r = await api.post("/api/v1/integrations", json=body_for(url), headers=section.mgmt)
    assert r.status_code == 422 and loc(r) == "config.url", r.text
    auth = {"type": "oauth2", "token_url": url, "client_id": "cid", "client_secret": "s"}
    r = await api.post("/api/v1/integrations", json=custom_http_integration("https://93.184.215.14/hook", [], auth),
                       headers=section.mgmt)  # fmt: skip
    assert r.status_code == 422 and loc(r) == "config.auth.token_url", r.text
