"""The URL guard resolves a vendor's host once per DNS_TTL_S, not once per message, and still checks
the answer on every use (providers/url_guard.py `UrlGuard._addresses`). Before, a fan-out to a
vendor by name ran `getaddrinfo` for every message, in the loop's default executor that the store
steps share. The resolver is scripted here (no network)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from typing import Any

import pytest

from providers import url_guard
from providers.base import ConfigurationError
from providers.url_guard import RefusedAddress, UrlGuard


class Resolver:
    """A scripted `getaddrinfo`: the next answer of each host, every call counted."""

    def __init__(self, answers: dict[str, list[str | Exception]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int, **_: Any) -> list[Any]:
        self.calls.append(host)
        answer = self.answers[host].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, port))]


@pytest.fixture
async def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    scripted = Resolver({})
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", scripted)
    return scripted


async def test_a_host_is_resolved_once_per_ttl_not_per_call(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver.answers["api.vendor.example"] = ["93.184.216.34", "93.184.216.35"]
    guard = UrlGuard(allow_private=False)
    first = [await guard.resolve("https://api.vendor.example/v3/mail/send") for _ in range(50)]
    assert {t.ip for t in first} == {"93.184.216.34"}
    assert resolver.calls == ["api.vendor.example"]  # before: 50 lookups
    later = url_guard._clock() + url_guard.DNS_TTL_S + 1
    monkeypatch.setattr(url_guard, "_clock", lambda: later)  # the kept answer is now out of date
    assert (await guard.resolve("https://api.vendor.example/v3/mail/send")).ip == "93.184.216.35"
    assert (await guard.resolve("https://api.vendor.example/v3/mail/send")).ip == "93.184.216.35"
    assert resolver.calls == ["api.vendor.example"] * 2


async def test_a_kept_answer_is_checked_on_every_use_and_failures_are_not_kept(resolver: Resolver) -> None:
    resolver.answers["inside.example"] = ["10.0.0.7"]
    resolver.answers["flaky.example"] = [socket.gaierror("temporary failure"), "93.184.216.34"]
    guard = UrlGuard(allow_private=False)
    for _ in range(2):  # refused both times, on the one answer kept
        with pytest.raises(RefusedAddress):
            await guard.resolve("https://inside.example/hook")
    assert resolver.calls == ["inside.example"]
    with pytest.raises(ConfigurationError, match="cannot resolve"):
        await guard.resolve("https://flaky.example/send")
    assert (await guard.resolve("https://flaky.example/send")).ip == "93.184.216.34"  # resolved again


async def test_a_copy_of_a_guard_keeps_no_answer_of_the_original(resolver: Resolver) -> None:
    """`dataclasses.replace` (a Twilio status callback checked over http) starts with no kept answers."""
    resolver.answers["cb.example"] = ["93.184.216.34", "93.184.216.36"]
    guard = UrlGuard(allow_private=False)
    await guard.resolve("https://cb.example/status")
    relaxed = replace(guard, https_only=False)
    assert (await relaxed.resolve("http://cb.example/status")).ip == "93.184.216.36"
    assert resolver.calls == ["cb.example", "cb.example"]
