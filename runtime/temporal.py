"""One way to connect to Temporal, shared by the API, the worker and the tests."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig

from settings import Settings

# The API's calls give up after about a second of the client's own retries (UNAVAILABLE, INTERNAL;
# RESOURCE_EXHAUSTED is retried once, a second later): a request waiting on Temporal answers its
# 503/502 then, and the caller retries (`Retry-After`) or the sweeper does (ingestion). The SDK's
# default (up to 10 s of retries, about 15 s under RESOURCE_EXHAUSTED) held every such request that
# long; it stays the worker's, which has no caller waiting.
REQUEST_RETRY = RetryConfig(max_elapsed_time_millis=1000)

# How long the API waits for a connection to Temporal: the TCP connection, the HTTP/2 handshake and
# the SDK's first call (GetSystemInfo). Without a bound, an address that accepts connections but never
# answers (a hung server, a proxy or load balancer with no backend) held the request 30 s, the
# SDK's own timeout of that call, and an address whose packets are dropped as long as the OS's TCP
# connect timeout (about two minutes); every other request needing Temporal queued behind it.
API_CONNECT_TIMEOUT = timedelta(seconds=5)


class TemporalUnreachable(Exception):
    """No connection to Temporal: refused, unresolvable, or no answer within the bound. `reason`:
    short, for an API answer; the message has the SDK's details, for the log."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


async def connect_temporal(
    settings: Settings, *, retry_config: RetryConfig | None = None, timeout: timedelta | None = None
) -> Client:
    """A client of the configured Temporal; `retry_config` None: the SDK's patient default (the worker).

    `timeout` (the API's `API_CONNECT_TIMEOUT`) bounds the whole connection, else TemporalUnreachable;
    None: the SDK's own bounds (the worker, which waits for Temporal at its start anyway)."""
    connecting = Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        retry_config=retry_config,
        connect_timeout=timeout,  # the TCP connection only: a dropped SYN fails then, not in minutes
    )
    if timeout is None:
        return await connecting
    seconds = timeout.total_seconds()
    try:
        async with asyncio.timeout(seconds):
            return await connecting
    except TimeoutError:
        reason = f"no answer within {seconds:g} s"
        raise TemporalUnreachable(f"{settings.temporal_address}: {reason}", reason) from None
    except RuntimeError as exc:  # the SDK's "Failed client connect: ..." (refused, DNS, TLS)
        raise TemporalUnreachable(f"{settings.temporal_address}: {exc}", "connection failed") from exc
