"""Provider and token URLs carry credentials: without REJOIN_ALLOW_PRIVATE_URLS they must be https
(a 422 naming the field on save, a configuration error at send). Local stand-ins (private URLs
allowed, or an allow-listed internal `host:port`) may stay http."""

from __future__ import annotations

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from providers.base import ConfigurationError
from providers.registry import ProviderRegistry
from providers.url_guard import UrlGuard, check_url
from settings import Settings
from store.engine import Store
from tests.helpers import make_section
from tests.provider_server import ProviderServer
from tests.providers.clients import outbound
from tests.providers.util import message

PUBLIC_HTTP = "http://93.184.216.34/token"


async def test_guard_refuses_plain_http_unless_private_urls_are_allowed() -> None:
    """A public http URL is refused in production mode; https passes; the dev mode keeps http."""
    with pytest.raises(ConfigurationError, match="https"):
        await UrlGuard(allow_private=False).resolve(PUBLIC_HTTP)
    assert (await UrlGuard(allow_private=False).resolve("https://93.184.216.34/token")).ip == "93.184.216.34"
    assert (await UrlGuard(allow_private=True).resolve(PUBLIC_HTTP)).scheme == "http"
    # An operator's allow-listed internal target is a local stand-in too.
    assert (await UrlGuard.of(False, ["93.184.216.34:80"]).resolve(PUBLIC_HTTP)).scheme == "http"
    # A product feed carries no credential: its check keeps http.
    await check_url("http://93.184.216.34/feed.csv", allow_private=False)


async def test_refused_urls_names_the_http_field(store: Store) -> None:
    """The save-time check names the field: an OAuth2 token URL, a preset's base URL."""
    async with outbound("aiohttp") as http:
        registry = ProviderRegistry(store, http, allow_private_urls=False)
        auth = {"type": "oauth2", "token_url": PUBLIC_HTTP, "client_id": "c", "client_secret": "s"}
        refused = await registry.refused_urls({"url": "https://93.184.215.14/hook", "auth": auth})
        assert refused is not None and refused[0] == "auth.token_url" and "https" in refused[1]
        refused = await registry.refused_urls({"api_key": "k", "base_url": "http://93.184.215.14"})
        assert refused is not None and refused[0] == "base_url"
        # Twilio calls the status callback (no credential of ours goes there): not refused for http.
        assert await registry.refused_urls({"status_callback": "http://93.184.215.14/cb"}) is None
        assert await ProviderRegistry(store, http, allow_private_urls=True).refused_urls({"url": PUBLIC_HTTP}) is None


async def test_send_to_a_stored_http_url_is_a_configuration_error(store: Store, fresh_provider: ProviderServer) -> None:
    """A configuration saved before the rule fails at send, before anything is sent."""
    async with outbound("aiohttp") as http:
        adapter = ProviderRegistry(store, http, allow_private_urls=False).for_kind("custom_http")
        with pytest.raises(ConfigurationError, match="https"):
            await adapter.send(message({"url": PUBLIC_HTTP}))
    assert fresh_provider.requests == []


async def test_save_refuses_http_token_and_base_urls(
    env: WorkflowEnvironment, settings: Settings, store: Store
) -> None:
    """POST /integrations in production mode: 422 at the http field (before: 201)."""
    strict = settings.model_copy(update={"allow_private_urls": False})
    app = create_app(strict, store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as api:
        sec = await make_section(api, "https-only")
        auth = {"type": "oauth2", "token_url": PUBLIC_HTTP, "client_id": "cid", "client_secret": "s3cret"}
        body = {"channel": "email", "name": "ESP", "kind": "custom_http",
                "config": {"url": "https://93.184.215.14/hook", "auth": auth}}  # fmt: skip
        r = await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "auth", "token_url"], r.text
        assert "https" in r.text
        body = {"channel": "email", "name": "SG", "kind": "sendgrid",
                "config": {"api_key": "SG.x", "from_email": "shop@example.com", "template_id": "d-1",
                           "base_url": "http://93.184.215.14"}}  # fmt: skip
        r = await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "base_url"], r.text
        body = {"channel": "email", "name": "ESP", "kind": "custom_http", "config": {"url": "http://93.184.215.14/h"}}
        r = await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "url"], r.text
