"""Security-test findings on the guarded HTTP caller and the SMTP adapter, on both outbound clients:
credentials never follow a redirect to another host, and a header that cannot be sent is a
configuration error before anything is sent (never a retried ValueError, never quoting the value)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest

from providers.base import ConfigurationError, ProviderError
from providers.http import Body, HttpCaller, as_transport
from providers.registry import ProviderRegistry
from providers.url_guard import Target, UrlGuard
from store.engine import Store
from tests.provider_server import ProviderServer, Reply
from tests.providers.clients import outbound
# The local SMTP server of the SMTP tests (a fixture: imported, pytest finds it here).
from tests.providers.test_push_and_smtp import Mailbox, smtp_server  # noqa: F401
from tests.providers.util import message

SECRET = "TOPSECRET-ABC"


@pytest.fixture
def attacker() -> Iterator[ProviderServer]:
    """A second server: another origin (same loopback host, another port)."""
    server = ProviderServer().start()
    yield server
    server.stop()


def secret_config(url: str) -> dict[str, Any]:
    return {"url": url, "headers": [{"key": "X-Api-Key", "value": SECRET, "secret": True}],
            "auth": {"type": "basic", "username": "shop", "password": "pw"}}  # fmt: skip


async def test_a_307_to_another_host_is_refused_and_sends_no_credentials(
    fresh_provider: ProviderServer, attacker: ProviderServer, store: Store, client_kind: str
) -> None:
    """A 307/308 whose Location is another origin is a permanent failure naming that host; the
    other host receives nothing (before: X-Api-Key and Authorization were replayed to it)."""
    for status in (307, 308):
        fresh_provider.script("/send", Reply(status, "", headers={"Location": attacker.url("/attacker")}))
        async with outbound(client_kind) as http:
            adapter = ProviderRegistry(store, http, allow_private_urls=True).for_kind("custom_http")
            with pytest.raises(ProviderError) as err:
                await adapter.send(message(secret_config(fresh_provider.url("/send"))))
        assert err.value.retryable is False and err.value.status == status
        assert f"127.0.0.1:{attacker.port}" in err.value.message and "not followed" in err.value.message
    assert attacker.requests == []
    assert len(fresh_provider.to("/send")) == 2


async def test_a_same_origin_307_still_carries_the_credentials(fresh_provider: ProviderServer, store: Store,
                                                               client_kind: str) -> None:  # fmt: skip
    """Same scheme, host and port (relative or absolute Location): followed with the headers as before."""
    fresh_provider.script("/send", Reply(307, "", headers={"Location": "/v2/send"}))
    fresh_provider.script("/v2/send", Reply(308, "", headers={"Location": fresh_provider.url("/v3/send")}))
    async with outbound(client_kind) as http:
        adapter = ProviderRegistry(store, http, allow_private_urls=True).for_kind("custom_http")
        resp = await adapter.send(message(secret_config(fresh_provider.url("/send"))))
    assert resp.status == 200
    final = fresh_provider.to("/v3/send")[0]
    assert final.headers["x-api-key"] == SECRET
    assert final.headers["authorization"] == "Basic " + base64.b64encode(b"shop:pw").decode()


BAD_HEADERS = [
    {"X-Shop": "acme\r\nX-Injected: 1"},
    {"X-Api-Key": SECRET + "\n"},
    {"X-Nul": "a\x00b"},
    {"Content-Length": "3"},
    {"host": "evil.example"},
    {"Transfer-Encoding": "chunked"},
    {"Connection": "close"},
    {"Bad Name": "x"},
]


@pytest.mark.parametrize("headers", BAD_HEADERS, ids=lambda h: repr(next(iter(h))))
async def test_an_unsendable_header_is_a_configuration_error_before_sending(
    fresh_provider: ProviderServer, client_kind: str, headers: dict[str, str]
) -> None:
    """CR/LF/NUL in a value, framing and hop-by-hop names, a name that is no token: a ConfigurationError
    (permanent, nothing sent) whose text never quotes the value; before, aiohttp raised a bare
    ValueError (retried forever), httpx a retryable 'connection error' quoting the secret value, or
    h11 an unhandled LocalProtocolError (Content-Length), and aiohttp sent a short Content-Length."""
    async with outbound(client_kind) as http:
        caller = HttpCaller(http, UrlGuard(True))
        with pytest.raises(ConfigurationError) as err:
            await caller.request("POST", fresh_provider.url("/send"), json={"a": 1234567}, headers=headers)
    assert SECRET not in str(err.value) and "acme" not in str(err.value)
    assert fresh_provider.requests == []


async def test_the_transports_turn_a_refused_header_into_a_configuration_error(
    fresh_provider: ProviderServer, client_kind: str
) -> None:
    """Below the caller's own check, a header the client refuses to write (ValueError, h11's
    LocalProtocolError) is a ConfigurationError without the value, not a retryable connection error."""
    target = Target(fresh_provider.url("/send"), "http", "127.0.0.1", fresh_provider.port, "127.0.0.1")
    for headers in ({"X-Api-Key": SECRET + "\r\n"}, {"Content-Length": "3"}):
        async with outbound(client_kind) as http:
            transport = as_transport(http)
            if client_kind == "aiohttp" and "Content-Length" in headers:
                continue  # aiohttp writes it as given; the caller's check is what stops it
            with pytest.raises(ConfigurationError) as err:
                await transport.send("POST", target, headers, Body(json={"a": 1234567}), None)
        assert SECRET not in str(err.value)




async def test_a_line_break_in_an_smtp_subject_is_sent_as_a_space(
    registry: ProviderRegistry, smtp_server: tuple[Mailbox, int]
) -> None:
    """A product name with CR/LF rendered into the subject neither blocks the send (the email library
    raised ValueError on every attempt) nor adds a header: the break becomes a space."""
    box, port = smtp_server
    cfg = {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "shop@shop.example",
           "from_name": "Shop\r\nX-Evil: 1"}  # fmt: skip
    payload = {"subject": "Your Dress\r\nBcc: victim@evil.example is waiting", "text": "hi"}
    await registry.for_kind("smtp").send(message(cfg, payload))
    _, rcpts, raw = box.messages[0]
    mail = message_from_bytes(raw)
    assert rcpts == ["jane@example.com"]
    assert mail["Bcc"] is None and mail["X-Evil"] is None
    assert " ".join(str(mail["Subject"]).split()) == "Your Dress Bcc: victim@evil.example is waiting"


async def test_an_smtp_sender_the_email_library_refuses_is_a_configuration_error(
    registry: ProviderRegistry, smtp_server: tuple[Mailbox, int]
) -> None:
    """A stored from_email that cannot make a header (a line break in its domain, kept in Message-ID)
    fails for good as a configuration error, not a bare ValueError retried on every attempt."""
    box, port = smtp_server
    cfg = {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "shop@shop\r\n.example"}
    with pytest.raises(ConfigurationError, match="could not be built"):
        await registry.for_kind("smtp").send(message(cfg, {"subject": "Hi", "text": "hi"}))
    assert box.messages == []
