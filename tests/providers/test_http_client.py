"""The worker's aiohttp client behind HttpCaller: body cap, bodies, and which connections it reuses."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from providers.base import ProviderError
from providers.http import MAX_RESPONSE_BYTES, HttpCaller
from providers.url_guard import UrlGuard
from tests.provider_server import ProviderServer, Reply
from tests.providers.clients import outbound
from tests.providers.test_tls_pinning import self_signed


async def test_huge_answer_is_capped_and_the_pool_stays_usable(fresh_provider: ProviderServer) -> None:
    """An answer over MAX_RESPONSE_BYTES is cut at the cap, and the next call on the session still works."""
    fresh_provider.script("/huge", Reply(200, {"pad": "x" * (MAX_RESPONSE_BYTES + 10_000)}))
    async with outbound("aiohttp") as http:
        caller = HttpCaller(http, UrlGuard(True))
        big = await caller.request("POST", fresh_provider.url("/huge"), json={})
        assert big.status == 200 and len(big.body) == MAX_RESPONSE_BYTES
        small = await caller.request("POST", fresh_provider.url("/send"), json={"n": 2})
        assert small.status == 200 and fresh_provider.to("/send")[0].json() == {"n": 2}


async def test_headers_and_form_bodies_reach_the_provider(fresh_provider: ProviderServer) -> None:
    """Custom headers, form bodies and raw content are sent as given (OAuth token calls use forms)."""
    async with outbound("aiohttp") as http:
        caller = HttpCaller(http, UrlGuard(True))
        await caller.request("POST", fresh_provider.url("/form"), data={"a": "1"}, headers={"X-Key": "v"})
        await caller.request("POST", fresh_provider.url("/raw"), content=b"raw-bytes")
    form = fresh_provider.to("/form")[0]
    assert form.headers["x-key"] == "v" and form.body == b"a=1"
    assert fresh_provider.to("/raw")[0].body == b"raw-bytes"


async def test_tls_connection_is_not_reused_for_another_name(tmp_path: Path) -> None:
    """A kept-alive TLS connection verified for `localhost` is not reused for another name on the same IP."""
    cert, key = self_signed(tmp_path, "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:  # keep-alive: answer every request on this connection
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    guard = UrlGuard.of(False, [f"localhost:{port}", f"127.0.0.1:{port}"])
    try:
        async with outbound("aiohttp", ssl_context=ssl.create_default_context(cafile=str(cert))) as http:
            caller = HttpCaller(http, guard)
            for _ in range(2):  # the second call reuses the first connection
                assert (await caller.request("GET", f"https://localhost:{port}/")).body == "ok"
            assert len(connections) == 1
            with pytest.raises(ProviderError, match="CERTIFICATE_VERIFY_FAILED"):
                await caller.request("GET", f"https://127.0.0.1:{port}/")
    finally:
        server.close()
