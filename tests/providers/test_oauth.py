"""OAuth2 client-credentials tokens: cached per integration, refreshed before expiry, refetched once on 401."""

from __future__ import annotations

import asyncio

from providers.oauth import Token, TokenCache
from providers.registry import ProviderRegistry
from tests.api.test_integrations import CLIENT_SECRET, token_endpoint
from tests.provider_server import ProviderServer, Reply
from tests.providers.util import message


def oauth_config(server: ProviderServer) -> dict[str, object]:
    return {"url": server.url("/send"), "auth": {"type": "oauth2", "token_url": server.url("/oauth/token"),
            "client_id": "cid", "client_secret": CLIENT_SECRET}}  # fmt: skip


async def test_token_fetched_once_for_many_concurrent_messages(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """Twenty concurrent sends share one token request (single-flight, cached)."""
    calls = token_endpoint(fresh_provider)
    adapter = registry.for_kind("custom_http")
    cfg = oauth_config(fresh_provider)
    await asyncio.gather(*(adapter.send(message(cfg, integration_id="int_a")) for _ in range(20)))
    assert len(calls) == 1
    assert {r.headers["authorization"] for r in fresh_provider.to("/send")} == {"Bearer tok-1"}


async def test_401_refetches_the_token_once_and_retries_once(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """A 401 from the endpoint triggers exactly one token refetch and one retry with the new token."""
    calls = token_endpoint(fresh_provider)
    adapter = registry.for_kind("custom_http")
    cfg = oauth_config(fresh_provider)
    await adapter.send(message(cfg, integration_id="int_b"))
    fresh_provider.script("/send", Reply(401, {"error": "expired"}))
    resp = await adapter.send(message(cfg, integration_id="int_b"))
    assert resp.status == 200 and len(calls) == 2
    assert [r.headers["authorization"] for r in fresh_provider.to("/send")] == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


async def test_token_refreshed_before_expires_in_runs_out() -> None:
    """A token is reused inside its lifetime and refetched once expires_in minus the margin has passed."""
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    issued: list[str] = []

    async def fetch() -> Token:
        issued.append(f"t{len(issued)}")
        return Token(issued[-1], expires_in=300)

    assert (await cache.get("k", fetch)).value == "t0"
    now[0] += 200
    assert (await cache.get("k", fetch)).value == "t0"
    now[0] += 75  # 275 s: inside the 30 s (10 %) margin before expiry
    assert (await cache.get("k", fetch)).value == "t1"
    assert cache.fetches == 2
