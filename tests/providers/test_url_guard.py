"""SSRF guard: internal addresses refused in every notation, after DNS, on redirects; the checked IP is pinned."""

from __future__ import annotations

import pytest

from providers.base import ConfigurationError, ProviderError
from providers.http import HttpCaller
from providers.registry import ProviderRegistry
from providers.url_guard import UrlGuard
from store.engine import Store
from tests.provider_server import ProviderServer, Reply
from tests.providers.clients import outbound
from tests.providers.util import message

INTERNAL = [
    "http://localhost/",  # a host name resolving to 127.0.0.1
    "http://127.0.0.1/",
    "http://127.1/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.7/",
    "http://192.168.1.1/",
    "http://0.0.0.0/",
]


@pytest.mark.parametrize("url", INTERNAL)
async def test_internal_addresses_refused_unless_allowed(url: str) -> None:
    """Loopback, private, link-local and metadata targets are refused in any notation when not allowed."""
    with pytest.raises(ConfigurationError, match="refusing"):
        await UrlGuard(allow_private=False).resolve(url)
    assert (await UrlGuard(allow_private=True).resolve(url)).ip


async def test_public_literal_is_allowed_and_shapes_checked() -> None:
    """A public address passes; non-http schemes and embedded credentials never do."""
    assert (await UrlGuard().resolve("https://93.184.215.14/x")).ip == "93.184.215.14"
    for bad in ("file:///etc/passwd", "gopher://x/", "http://user:pw@93.184.215.14/"):
        with pytest.raises(ConfigurationError):
            await UrlGuard(allow_private=True).resolve(bad)


async def test_connection_is_pinned_to_the_checked_address(fresh_provider: ProviderServer, client_kind: str) -> None:
    """The call goes to the address the guard checked, with the original host in the Host header."""
    guard = UrlGuard.of(False, [f"localhost:{fresh_provider.port}"])
    target = await guard.resolve(f"http://localhost:{fresh_provider.port}/send")
    assert target.ip == "127.0.0.1" and target.pinned_url == f"http://127.0.0.1:{fresh_provider.port}/send"
    async with outbound(client_kind) as http:
        resp = await HttpCaller(http, guard).request("POST", f"http://localhost:{fresh_provider.port}/send", json={})
    assert resp.status == 200
    assert fresh_provider.to("/send")[0].headers["host"] == f"localhost:{fresh_provider.port}"


async def test_redirect_to_private_address_refused(fresh_provider: ProviderServer, store: Store, client_kind: str) -> None:
    """A 307 to an internal address is refused before connecting; other redirects are not followed."""
    fresh_provider.script("/send", Reply(307, "", headers={"Location": "http://169.254.169.254/latest/meta-data/"}))
    fresh_provider.script("/moved", Reply(302, "", headers={"Location": fresh_provider.url("/send")}))
    async with outbound(client_kind) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=False, allowed_targets=[f"127.0.0.1:{fresh_provider.port}"])
        adapter = registry.for_kind("custom_http")
        with pytest.raises(ConfigurationError, match="169.254.169.254"):
            await adapter.send(message({"url": fresh_provider.url("/send")}))
        with pytest.raises(ProviderError, match="not followed") as err:
            await adapter.send(message({"url": fresh_provider.url("/moved")}))
        assert err.value.retryable is False
        # Without the allow-list entry the local server itself is refused.
        strict = ProviderRegistry(store, http, allow_private_urls=False).for_kind("custom_http")
        with pytest.raises(ConfigurationError):
            await strict.send(message({"url": fresh_provider.url("/send")}))
    assert [r.path for r in fresh_provider.requests] == ["/send", "/moved"]


async def test_safe_307_redirect_is_followed_with_the_same_body(fresh_provider: ProviderServer, client_kind: str) -> None:
    """A 307 to an allowed address is followed with method and body intact."""
    fresh_provider.script("/old", Reply(307, "", headers={"Location": "/new"}))
    async with outbound(client_kind) as http:
        resp = await HttpCaller(http, UrlGuard(True)).call("POST", fresh_provider.url("/old"), json={"a": 1})
    assert resp.status == 200 and fresh_provider.to("/new")[0].json() == {"a": 1}
