"""Signing keys that cannot sign are 422s naming the field; an APNs device token cannot change the
request path; the integration test call reaches APNs over HTTP/2, as deliveries do."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.apns import ApnsConfig, ApnsProvider
from providers.base import ConfigurationError
from providers.oauth import service_account_assertion
from providers.registry import ProviderRegistry
from tests.helpers import SectionKeys
from tests.provider_server import ProviderServer
from tests.providers.h2_server import H2Server
from tests.providers.keys import ec_key, pem, rsa_key, service_account
from tests.providers.test_tls_pinning import self_signed
from tests.providers.util import message

MALFORMED_PEM = "-----BEGIN PRIVATE KEY-----\nMIIBroken/notakey==\n-----END PRIVATE KEY-----\n"


def apns(base_url: str, private_key: str | None = None) -> dict[str, Any]:
    return {"team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": private_key or pem(ec_key()),
            "topic": "com.shop.app", "base_url": base_url}  # fmt: skip


async def save(
    api: httpx.AsyncClient, sec: SectionKeys, channel: str, kind: str, config: dict[str, Any]
) -> httpx.Response:
    body = {"channel": channel, "name": kind, "kind": kind, "config": config,
            "identifier_type": "email" if channel == "email" else "custom"}  # fmt: skip
    return await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)


def refused_at(r: httpx.Response) -> list[str]:
    """The refused body field's path (after the `body` every 422's `loc` starts with)."""
    assert r.status_code == 422, r.text
    source, *field = r.json()["detail"][0]["loc"]
    assert source == "body", r.text
    return [str(part) for part in field]


async def test_keys_that_cannot_sign_are_422s_naming_the_field(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """A malformed PEM or the wrong key type, for FCM and Emarsys service accounts and the APNs .p8."""
    account = service_account(fresh_provider.url("/token"))
    for bad in (MALFORMED_PEM, pem(ec_key()), "not a pem"):
        fcm = {"service_account": account | {"private_key": bad}, "base_url": fresh_provider.url()}
        assert refused_at(await save(api, section, "app_push", "fcm", fcm)) == ["config", "service_account"]
        emarsys = {"service_account": json.dumps(account | {"private_key": bad}), "event_id": "7",
                   "base_url": fresh_provider.url()}  # fmt: skip
        assert refused_at(await save(api, section, "email", "emarsys", emarsys)) == ["config", "service_account"]
    for bad in (MALFORMED_PEM, pem(rsa_key())):
        got = refused_at(await save(api, section, "app_push", "apns", apns(fresh_provider.url(), bad)))
        assert got == ["config", "private_key"]
    assert fresh_provider.requests == []  # refused before any token request


async def test_signing_with_an_unusable_key_is_a_configuration_error(registry: ProviderRegistry) -> None:
    """Past the model (a config stored before these checks): PyJWT's InvalidKeyError becomes a
    ConfigurationError, which fails the send permanently instead of crashing the activity."""
    account = service_account("https://oauth2.example/token") | {"private_key": pem(ec_key())}
    with pytest.raises(ConfigurationError, match="not a valid RSA key"):
        service_account_assertion(account, "scope")
    cfg = ApnsConfig.model_construct(**apns("https://api.push.example", pem(rsa_key())))
    with pytest.raises(ConfigurationError, match="P-256"):
        await ApnsProvider(registry.context)._signer(cfg)()


@pytest.mark.parametrize("token", ["../../v1/projects/x/messages:send?", "abc/def", "beef?x=1", "beef#", "be ef",
                                   "%2e%2e", "", "0xbeef", "bééf"])  # fmt: skip
async def test_apns_refuses_a_device_token_that_is_not_hex(
    registry: ProviderRegistry, fresh_provider: ProviderServer, token: str
) -> None:
    with pytest.raises(ConfigurationError, match="not an APNs device token"):
        await registry.for_kind("apns").send(message(apns(fresh_provider.url()), {"title": "t"}, channel="app_push",
                                                     recipient=token))  # fmt: skip
    assert fresh_provider.requests == []  # no request at all, on any path


async def test_apns_hex_tokens_of_either_case_are_sent(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    token = "ABCdef0123456789" * 4
    await registry.for_kind("apns").send(message(apns(fresh_provider.url()), {"title": "t"}, channel="app_push",
                                                 recipient=token))  # fmt: skip
    assert [r.path for r in fresh_provider.requests] == [f"/3/device/{token}"]


async def test_the_test_call_refuses_a_path_changing_recipient(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    r = await save(api, section, "app_push", "apns", apns(fresh_provider.url()))
    assert r.status_code == 201, r.text
    r = await api.post(f"/api/v1/integrations/{r.json()['id']}/test", headers=section.mgmt,
                       json={"payload": {"title": "t"}, "recipient": "../../v1/projects/x/messages:send?"})  # fmt: skip
    assert r.status_code == 200 and r.json()["ok"] is False and "not an APNs device token" in r.json()["error"]
    assert fresh_provider.requests == []


@dataclass
class TlsPushServer:
    """HTTPS on loopback offering h2 and http/1.1 by ALPN; records which one each connection chose."""

    h2: H2Server = field(default_factory=H2Server)
    protocols: list[str | None] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        self.protocols.append(chosen)
        if chosen == "h2":
            await self.h2.handle(reader, writer)
            return
        try:  # HTTP/1.1: answer 200, as APNs' HTTP/2 answer would be
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()


@asynccontextmanager
async def tls_push_server(tmp: Path) -> AsyncIterator[tuple[TlsPushServer, Path]]:
    cert, key = self_signed(tmp, "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    state = TlsPushServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=ctx)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state, cert
    finally:
        server.close()


async def test_the_test_call_reaches_apns_over_http2(
    api: httpx.AsyncClient, section: SectionKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TLS, as against Apple: the test call negotiates h2 by ALPN and the push is an HTTP/2 stream."""
    async with tls_push_server(tmp_path) as (server, cert):
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the API's client trusts the local certificate
        r = await save(api, section, "app_push", "apns", apns(f"https://localhost:{server.port}"))
        assert r.status_code == 201, r.text
        r = await api.post(f"/api/v1/integrations/{r.json()['id']}/test", headers=section.mgmt,
                           json={"payload": {"title": "Hi"}, "recipient": "aa11"})  # fmt: skip
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
    assert server.protocols == ["h2"]
    (headers, body), = server.h2.received
    assert headers[":path"] == "/3/device/aa11" and headers["apns-topic"] == "com.shop.app"
    assert json.loads(body) == {"aps": {"alert": {"title": "Hi"}}}
