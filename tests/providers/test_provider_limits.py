"""Limits a misbehaving provider could otherwise defeat: an answer trickled a byte at a time (the
whole exchange has a deadline), a Retry-After that is infinite or absurd (back-off instead; past the
remaining budget the give-up says so), a self-signed certificate (permanent, not retried for the
whole budget) and a token said to expire at once (kept a minimum time)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.provider_retry import retry_later
from api.main import create_app
from providers.base import ProviderError, classify_http, parse_retry_after
from providers.http import HttpCaller, is_timeout
from providers.registry import ProviderRegistry
from providers.url_guard import UrlGuard
from settings import Settings
from store.engine import Store
from store.tables import Send
from tests.helpers import (
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    make_section,
    reachable_user,
)
from tests.provider_server import ProviderServer, Reply
from tests.providers.clients import outbound
from tests.providers.test_tls_pinning import self_signed
from tests.providers.util import message
from worker import build_worker


async def trickle_server(interval: float) -> AsyncIterator[int]:
    """Answers 200 with `Content-Length: 40`, then one byte of the body every `interval` seconds
    (the provider server has no such mode)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n")
            for _ in range(40):
                await writer.drain()
                await asyncio.sleep(interval)
                writer.write(b" ")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
async def trickling() -> AsyncIterator[int]:
    async for port in trickle_server(0.25):
        yield port


async def test_a_trickled_answer_times_out_inside_the_attempt(trickling: int, client_kind: str) -> None:
    """Each byte comes within the read timeout (1 s), but the whole answer would take 10 s: the
    call ends as a timeout at the deadline (the read budget), outcome unknown (before: it ran on
    until the answer ended, past the activity's start-to-close)."""
    async with outbound(client_kind, timeout=1.0) as http:
        caller = HttpCaller(http, UrlGuard(allow_private=True))
        started = time.monotonic()
        with pytest.raises(ProviderError) as err:
            await asyncio.wait_for(caller.request("POST", f"http://127.0.0.1:{trickling}/send", json={}), 6)
    elapsed = time.monotonic() - started
    assert is_timeout(err.value) and err.value.retryable and err.value.outcome_unknown, err.value.message
    assert elapsed < 2.5, elapsed


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf", "99999999", "86401"])
def test_implausible_retry_after_falls_back_to_back_off(value: str) -> None:
    """Not finite or over a day: None, so Temporal's back-off applies (before: inf, or 1e8 s)."""
    assert parse_retry_after(value) is None
    err = classify_http(429, "slow down", {"retry-after": value})
    assert err is not None and err.retry_after is None
    retried = retry_later(err, "snd_x")  # before: OverflowError in timedelta(seconds=inf)
    assert retried.next_retry_delay is None and not retried.non_retryable


def test_plausible_retry_after_is_kept() -> None:
    assert parse_retry_after("30") == 30.0 and parse_retry_after("3600") == 3600.0 and parse_retry_after("-3") == 0.0


@pytest.mark.parametrize("value", ["3601", "7200", "86400"])
def test_an_hourly_or_daily_quotas_retry_after_is_honoured_not_backed_off(value: str) -> None:
    """A trial's vendor with a daily quota answered 429 Retry-After 86400; the header was set aside
    as implausible (over an hour) and the vendor called again 2, 2, 4, 8 s later, 15-40 more 429s
    per message. Within the budget it is now waited for; past it the send gives up saying so."""
    assert parse_retry_after(value) == float(value)
    err = classify_http(429, "daily quota", {"retry-after": value})
    assert err is not None and err.retry_after == float(value)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, scheduled_time=datetime.now(UTC), schedule_to_close_timeout=timedelta(hours=6)
    )
    retried: ApplicationError = env.run(retry_later, err, "snd_quota")
    if float(value) < 6 * 3600:
        assert not retried.non_retryable and retried.next_retry_delay == timedelta(seconds=float(value))
    else:
        assert retried.non_retryable and "exceeds the remaining delivery budget" in retried.message


def test_retry_after_past_the_remaining_budget_gives_up_saying_so(caplog: pytest.LogCaptureFixture) -> None:
    """A Retry-After longer than what is left of the delivery budget: the error says so (it becomes
    the give-up reason) and is not retried, and the log line does not promise a retry."""
    err = classify_http(429, "slow down", {"retry-after": "1800"})
    assert err is not None and err.retry_after == 1800.0
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, scheduled_time=datetime.now(UTC) - timedelta(hours=5, minutes=50),
        schedule_to_close_timeout=timedelta(hours=6),
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="activities.provider_retry"):
        retried: ApplicationError = env.run(retry_later, err, "snd_late")
    assert retried.non_retryable
    assert retried.message.startswith("Retry-After 1800 s exceeds the remaining delivery budget"), retried.message
    assert "rate limited (429)" in retried.message
    line = caplog.records[-1].getMessage()
    assert "exceeds the remaining delivery budget" in line and "Temporal retries it" not in line, line
    # Within the budget: retried after the Retry-After, as before.
    env.info = dataclasses.replace(env.info, scheduled_time=datetime.now(UTC))
    retried = env.run(retry_later, err, "snd_early")
    assert not retried.non_retryable and retried.next_retry_delay == timedelta(seconds=1800)


async def test_an_untrusted_certificate_is_permanent(tmp_path: Path, client_kind: str) -> None:
    """A self-signed certificate fails verification the same way every time: a permanent error
    naming the certificate problem (before: a retryable connection error, retried for 6 h)."""
    cert, key = self_signed(tmp_path, "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with outbound(client_kind) as http:  # the system's trust store: the certificate is not in it
            with pytest.raises(ProviderError) as err:
                await HttpCaller(http, UrlGuard(allow_private=True)).request("POST", f"https://localhost:{port}/send")
    finally:
        server.close()
    assert err.value.retryable is False and not err.value.outcome_unknown
    assert "TLS certificate verification failed" in err.value.message and "self-signed" in err.value.message


@pytest.mark.parametrize("expires_in", [0, "0", -5, 2])
async def test_a_token_said_to_expire_at_once_is_kept_a_minute(
    store: Store, fresh_provider: ProviderServer, expires_in: int | str, caplog: pytest.LogCaptureFixture
) -> None:
    """`expires_in` of 0, negative or a few seconds: one token serves the next messages (before: a
    token fetch per message), with one warning."""
    path = f"/token{expires_in!r}"  # one endpoint per case: the warning is once per endpoint and process
    fresh_provider.default(path, Reply(200, {"access_token": "tok", "expires_in": expires_in}))
    auth = {"type": "oauth2", "token_url": fresh_provider.url(path), "client_id": "cid",
            "client_secret": "s3cret-value"}  # fmt: skip
    config = {"url": fresh_provider.url("/hook"), "auth": auth}
    with caplog.at_level(logging.WARNING, logger="providers.oauth"):
        async with outbound("aiohttp") as http:
            adapter = ProviderRegistry(store, http, allow_private_urls=True).for_kind("custom_http")
            for _ in range(3):
                await adapter.send(message(config, integration_id="int_short_token"))
    assert len(fresh_provider.to(path)) == 1
    assert len(fresh_provider.to("/hook")) == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "providers.oauth"]
    assert len(warnings) == 1 and f"expires_in={expires_in}" in warnings[0], warnings


@pytest.fixture
async def short_attempts(
    env: WorkflowEnvironment, settings: Settings, store: Store
) -> AsyncIterator[httpx.AsyncClient]:
    """API + in-process worker on their own queue, delivery attempts of 2 s (a 1.6 s read budget)."""
    fs = settings.model_copy(
        update={"task_queue": "rejoin-limits-" + secrets.token_hex(4), "delivery_timeout": timedelta(seconds=2)}
    )
    app = create_app(fs, store=store, temporal=env.client)
    async with build_worker(env.client, fs, store) as w, w:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test", timeout=60) as client:
            yield client


async def test_a_journey_against_a_trickling_provider_records_a_timeout(
    short_attempts: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The first answer trickles (a byte every 0.3 s, 12 s in all, past the 2 s attempt): the attempt
    ends as a timeout inside it (one `provider_retry` line, the send `in_flight` with a reason), and
    the retry delivers, flagged as a possible duplicate (before: Temporal's start-to-close timeout
    ended the attempt, with no line and no reason)."""
    calls: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = [int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length")]
                await reader.readexactly(length[0] if length else 0)
                calls.append(1)
                if len(calls) > 1:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n")
                for _ in range(40):
                    await writer.drain()
                    await asyncio.sleep(0.3)
                    writer.write(b" ")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    api = short_attempts
    try:
        with caplog.at_level(logging.INFO):
            sec = await make_section(api, "trickle-" + secrets.token_hex(3))
            await add_integration(api, sec, kind="custom_http", config={"url": f"http://127.0.0.1:{port}/send"})
            cid = await create_campaign(api, sec, cart_campaign(wait="PT1H"))
            dyid, uid = await reachable_user(api, sec)
            await collect(api, sec, dyid, add_to_cart("sku-1"))
            result = await journey_result(env.client, sec, cid, uid, timeout=60)
    finally:
        server.close()
    assert result.sent == 1 and len(calls) == 2
    with store.session() as s:
        send = s.exec(select(Send).where(Send.journey_id == result.journey_id)).one()
    assert (send.status, send.possible_duplicate) == ("accepted", True)
    retries = [r.getMessage() for r in caplog.records if r.name == "activities.provider_retry"]
    assert retries == [f"{send.key}: provider failed (timeout); Temporal retries it"], retries
