"""A resolver that is slow or answers "try again" is a passing fault (providers/url_guard.py): the
lookup gives up after DNS_TIMEOUT_S with a retryable ProviderError, so a send is retried rather
than failed for good as "configuration: cannot resolve host" (what EAI_AGAIN did), and a stuck
resolver no longer holds the send until Temporal's timeout. A name that does not exist stays a
configuration error. The resolver is scripted (no network)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from providers import url_guard
from providers.base import ConfigurationError, ProviderError
from providers.url_guard import UrlGuard, save_time_refusal
from tests.security.test_url_guard_dns_cache import Resolver, resolver  # noqa: F401  (fixture)


async def test_a_resolver_saying_try_again_is_a_retryable_fault_then_resolves(resolver: Resolver) -> None:
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    resolver.answers["api.vendor.example"] = [again, "93.184.216.34"]
    guard = UrlGuard(allow_private=False)
    with pytest.raises(ProviderError) as raised:
        await guard.resolve("https://api.vendor.example/send")
    assert raised.value.retryable and not raised.value.outcome_unknown
    assert "api.vendor.example" in raised.value.message
    assert (await guard.resolve("https://api.vendor.example/send")).ip == "93.184.216.34"


async def test_a_name_that_does_not_exist_stays_a_configuration_error(resolver: Resolver) -> None:
    resolver.answers["typo.vendor.example"] = [socket.gaierror(socket.EAI_NONAME, "Name or service not known")]
    with pytest.raises(ConfigurationError, match="cannot resolve host typo.vendor.example"):
        await UrlGuard(allow_private=False).resolve("https://typo.vendor.example/send")


async def test_a_stuck_resolver_is_given_up_on_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    async def stuck(host: str, port: int, **_: Any) -> list[Any]:
        await asyncio.sleep(3600)
        return []

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", stuck)
    monkeypatch.setattr(url_guard, "DNS_TIMEOUT_S", 0.2)
    with pytest.raises(ProviderError, match="no DNS answer within 0.2 s") as raised:
        await asyncio.wait_for(UrlGuard(allow_private=False).resolve("https://slow.vendor.example/send"), 5)
    assert raised.value.retryable


async def test_saving_a_url_whose_host_cannot_be_resolved_now_is_left_to_send_time(resolver: Resolver) -> None:
    resolver.answers["api.vendor.example"] = [socket.gaierror(socket.EAI_AGAIN, "Temporary failure")]
    assert await save_time_refusal(UrlGuard(allow_private=False), "https://api.vendor.example/send") is None
