"""Both outbound HTTP clients behind HttpCaller, so the guarded-HTTP rules are tested on each."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import httpx

from providers.http import outbound_session

# aiohttp: the worker's HTTP/1.1 client; httpx: APNs (HTTP/2) and callers holding an httpx client.
CLIENT_KINDS = ("aiohttp", "httpx")


@asynccontextmanager
async def outbound(
    kind: str, *, timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[httpx.AsyncClient | aiohttp.ClientSession]:
    if kind == "aiohttp":
        async with outbound_session(limit=20, timeout=timeout, connect=timeout, ssl_context=ssl_context) as session:
            yield session
    else:
        verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), verify=verify) as http:
            yield http
