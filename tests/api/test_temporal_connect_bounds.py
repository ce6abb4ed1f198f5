"""A Temporal that does not answer never holds the API: its start, and each request that needs it,
answer within a bound.

- Nothing listens at the address: a 503 at once (connection refused).
- An address that accepts TCP but never answers (a hung server, a proxy with no backend): before,
  `Client.connect` waited 30 s (the SDK's own timeout of its first call) under a lock, so requests
  arriving together waited 30 s each in turn; now they share one attempt and answer 503 within
  API_CONNECT_TIMEOUT.
- Connected, then Temporal stops answering: a route's calls gave up after the SDK's 30 s and
  answered 502 ("refused"); now 503 within CALL_TIMEOUT_SECONDS.
- The API's start does not wait for Temporal; its log says within the bound that Temporal is not
  reachable and that it keeps trying.

Real parts: loopback sockets (a plain TCP server that never writes; tests/temporal_fault_server.py's
gRPC server made silent after its handshake), the session's database.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h2.connection
import httpx
import pytest

from api import temporal_errors
from api.main import create_app
from runtime.temporal import API_CONNECT_TIMEOUT
from settings import Settings
from store.engine import Store
from tests.api.temporal_outage import api_connecting_to, url_feed
from tests.helpers import SectionKeys
from tests.temporal_fault_server import _SYSTEM_INFO, TemporalFaultServer

BOUND = API_CONNECT_TIMEOUT.total_seconds() + 2.5  # the bound, and time for a loaded machine
# Requests arriving together share one attempt: about one bound for all (a CI machine under load took
# 7.6 s), where each waiting its turn behind the others took three (15 s and more).
TOGETHER_BOUND = 2 * API_CONNECT_TIMEOUT.total_seconds()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _silent_tcp() -> AsyncIterator[int]:
    """A port that accepts connections and never sends a byte."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65535):
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in held:
            writer.close()


class _SilentAfterHandshake(TemporalFaultServer):
    """Answers the SDK's connection check, then never answers a call: a Temporal that hangs."""

    def _answer(self, conn: h2.connection.H2Connection, stream_id: int, path: str) -> None:
        if path == _SYSTEM_INFO:
            super()._answer(conn, stream_id, path)
        else:
            self.calls.append(path.rsplit("/", 1)[-1])


async def test_nothing_listening_is_a_503_at_once(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store
) -> None:
    feed = await url_feed(api, section)
    async with api_connecting_to(settings, store, f"127.0.0.1:{_free_port()}") as offline:
        started = time.monotonic()
        r = await offline.post(f"/api/v1/feeds/{feed}/sync", headers=section.mgmt)
        took = time.monotonic() - started
    assert r.status_code == 503 and "not reachable" in r.json()["error"], r.text
    assert r.headers.get("retry-after"), r.headers
    assert took < BOUND, f"{took:.1f} s"


async def test_a_silent_address_is_a_503_within_the_bound_for_requests_arriving_together(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store
) -> None:
    feed = await url_feed(api, section)
    async with _silent_tcp() as port, api_connecting_to(settings, store, f"127.0.0.1:{port}") as hung:
        started = time.monotonic()
        answers = await asyncio.gather(*(hung.post(f"/api/v1/feeds/{feed}/sync", headers=section.mgmt)
                                         for _ in range(3)))  # fmt: skip
        took = time.monotonic() - started
    for r in answers:
        assert r.status_code == 503, r.text
        assert "not reachable" in r.json()["error"] and "no answer within" in r.json()["error"], r.text
    assert took < TOGETHER_BOUND, f"three requests took {took:.1f} s (each waited its turn?)"


async def test_a_temporal_that_stops_answering_calls_is_a_503_within_the_bound(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(temporal_errors, "CALL_TIMEOUT_SECONDS", 2.0)  # the test's time, not the rule
    feed = await url_feed(api, section)
    silent = _SilentAfterHandshake()
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    silent.port = int(server.sockets[0].getsockname()[1])
    try:
        async with api_connecting_to(settings, store, f"127.0.0.1:{silent.port}") as hung:
            started = time.monotonic()
            r = await hung.post(f"/api/v1/feeds/{feed}/sync", headers=section.mgmt)
            took = time.monotonic() - started
    finally:
        server.close()
        for writer in list(silent._open):
            writer.close()
    assert "StartWorkflowExecution" in silent.calls, silent.calls
    assert r.status_code == 503 and "did not answer" in r.json()["error"], r.text
    assert "start the feed's sync" in r.json()["error"] and r.headers.get("retry-after"), r.text
    assert took < 2.0 + 2.5, f"{took:.1f} s"


async def test_the_api_starts_without_temporal_and_logs_it_is_unreachable(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.deps")
    async with _silent_tcp() as port:
        app = create_app(settings.model_copy(update={"temporal_address": f"127.0.0.1:{port}"}), store=store)
        started = time.monotonic()
        async with app.router.lifespan_context(app):
            assert time.monotonic() - started < 1, "the start waited for Temporal"
            while not any("not reachable" in r.getMessage() for r in caplog.records):
                assert time.monotonic() - started < BOUND, "no word in the log that Temporal is unreachable"
                await asyncio.sleep(0.1)
    # The first word is the start's; the background sweeper may add its own if the shared test database holds
    # events left undispatched by earlier tests (it then also finds Temporal unreachable).
    warning = next(r for r in caplog.records if "not reachable" in r.getMessage())
    assert warning.levelno == logging.WARNING and f"127.0.0.1:{port}" in warning.getMessage(), warning.getMessage()
