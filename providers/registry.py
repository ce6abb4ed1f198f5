"""Which adapter serves an integration kind: the single mapping from kind to adapter.

Each adapter class declares its `kind`, the `channels` it can serve, its `Config` model (what
the API validates and stores) and whether the vendor honours our idempotency key.

Every call through the registry's adapters (deliveries, batched runs, the API's test call) runs
with its integration's secrets masked (`Redacting`) and its own read timeout, `timeout_seconds`
in the stored configuration, when it has one (clipped to the delivery attempt's share,
`providers/http.py::provider_call_timeouts`); else the client's default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from pydantic import BaseModel

from domain.text import storable
from providers.apns import ApnsProvider
from providers.base import (
    ConfigurationError,
    OutboundMessage,
    Provider,
    ProviderError,
    ProviderResponse,
    Redactor,
    redacting,
)
from providers.context import AdapterContext
from providers.custom_http import CustomHttpProvider
from providers.emarsys import EmarsysProvider
from providers.fcm import FcmProvider
from providers.http import HttpCaller, call_timeout, provider_call_timeouts
from providers.iterable import IterableProvider
from providers.klaviyo import KlaviyoProvider
from providers.outbox import OutboxProvider
from providers.ratelimit import RateLimiter
from providers.responsys import ResponsysProvider
from providers.sendgrid import SendGridProvider
from providers.smtp import SmtpProvider
from providers.twilio import TwilioProvider
from providers.url_guard import RefusedAddress, UrlGuard, save_time_refusal
from providers.webpush import WebPushProvider
from store.engine import Store

ALL_CHANNELS = ("email", "sms", "app_push", "web_push")

# kind -> adapter class (outbox is special: it needs the store, not HTTP)
ADAPTERS: dict[str, Any] = {
    cls.kind: cls
    for cls in (
        CustomHttpProvider,
        SendGridProvider,
        IterableProvider,
        KlaviyoProvider,
        ResponsysProvider,
        EmarsysProvider,
        SmtpProvider,
        TwilioProvider,
        FcmProvider,
        ApnsProvider,
        WebPushProvider,
    )
}
INTEGRATION_KINDS = ("outbox", *ADAPTERS)


# An integration's own provider read timeout (seconds), kept in its stored configuration beside
# `rate_limit_per_second` (the API's `timeout_seconds`, 1 to 60): for a vendor that is slower than
# the default 10 s but answers. Kinds that make no HTTP call have none (SMTP has `config.timeout`).
TIMEOUT_KEY = "timeout_seconds"
TIMEOUT_RANGE = (1.0, 60.0)
NO_HTTP_KINDS = frozenset({"outbox", "smtp"})
# `Settings.delivery_timeout`'s default: the attempt a registry built without one assumes.
DEFAULT_DELIVERY_TIMEOUT = timedelta(seconds=30)


def configured_timeout(config: dict[str, Any]) -> float | None:
    """The integration's own read timeout from its (stored) configuration; None: the default."""
    value = config.get(TIMEOUT_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


URL_KEYS = frozenset({"url", "base_url", "token_url", "login_url", "token_uri", "status_callback"})


def _fields(node: Any, keys: frozenset[str], path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every scalar field named in `keys`, at any depth of a configuration."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if k in keys and not isinstance(v, dict | list):
                yield p, v
            else:
                yield from _fields(v, keys, p)


def _urls(node: Any) -> list[tuple[str, str]]:
    """Every outbound URL in a configuration, with its dotted path."""
    return [(p, v) for p, v in _fields(node, URL_KEYS) if isinstance(v, str)]


# Where an integration's secrets are sent: its URLs (the status callback is Twilio calling us, not
# where a credential goes) and the SMTP server. A change here re-targets the stored credentials,
# so an update that changes one must re-enter its secrets (api/routes/integrations.py). So does
# SMTP's `security`: turning TLS off would send the kept password in clear to the same server.
ADDRESS_KEYS = frozenset({"url", "base_url", "token_url", "login_url", "token_uri", "host", "port", "security"})


def addresses(node: Any) -> dict[str, Any]:
    """{dotted path: value} of every address field in a (public) configuration."""
    return dict(_fields(node, ADDRESS_KEYS))


def config_model(kind: str) -> type[BaseModel] | None:
    cls = ADAPTERS.get(kind)
    return cls.Config if cls is not None else None


def channels_for(kind: str) -> tuple[str, ...]:
    cls = ADAPTERS.get(kind)
    return tuple(getattr(cls, "channels", ALL_CHANNELS)) if cls is not None else ALL_CHANNELS


class Redacting:
    """An adapter whose calls run with its integration's `Redactor` (`providers/base.py`).

    Vendors quote back the credentials they refused: the errors made during the call mask them
    as they are made, and what leaves here (an error's text, body and headers, an accepted
    answer's body) is masked once more, so no caller (delivery, a scheduled run, the API's test
    call and save-time check) stores or shows a secret of the integration it called."""

    def __init__(self, adapter: Provider, delivery_timeout: timedelta = DEFAULT_DELIVERY_TIMEOUT) -> None:
        self.adapter = adapter
        self.honours_idempotency_key = adapter.honours_idempotency_key
        self.delivery_timeout = delivery_timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self.adapter, name)

    def read_timeout(self, config: dict[str, Any]) -> float | None:
        """The integration's own read timeout, within the attempt's share; None: the client's default."""
        configured = configured_timeout(config)
        return None if configured is None else provider_call_timeouts(self.delivery_timeout, configured)[0]

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        redactor = Redactor.of(message.config)
        with _masking(redactor), call_timeout(self.read_timeout(message.config)):
            resp = await self.adapter.send(message)
        return redactor.answer(resp)

    async def validate(self, config: dict[str, Any]) -> None:
        check = getattr(self.adapter, "validate", None)
        if check is None:
            return
        with _masking(Redactor.of(config)), call_timeout(self.read_timeout(config)):
            await check(config)


@contextmanager
def _masking(redactor: Redactor) -> Iterator[None]:
    """Errors made inside are masked as they are made (`redacting`) and once more as they leave."""
    with redacting(redactor):
        try:
            yield
        except ProviderError as err:
            _masked(err, redactor)
            raise
        except ConfigurationError as err:
            _masked_configuration(err, redactor)
            raise


def _masked(err: ProviderError, redactor: Redactor) -> None:
    """Mask `err`'s text again with `redactor` (one made outside its call kept it whole)."""
    err.message, err.body = redactor.redact(err.message), redactor.redact(err.body)
    err.args = (err.message,)
    err.headers = redactor.headers(err.headers)
    err.redactor = redactor


def _masked_configuration(err: ConfigurationError, redactor: Redactor) -> None:
    """A configuration error is Rejoin's own words, kept readable (a refused URL names its
    address); one quoting a vendor (a refused token) was masked when made: secrets only, again,
    and made `storable` (Responsys' refused login quotes its `errorCode` raw)."""
    err.args = tuple(storable(redactor.secrets(a)) if isinstance(a, str) else a for a in err.args)


class ProviderRegistry:
    def __init__(
        self,
        store: Store,
        http: httpx.AsyncClient | aiohttp.ClientSession,
        *,
        allow_private_urls: bool,
        allowed_targets: Iterable[str] = (),
        http2: httpx.AsyncClient | None = None,
        delivery_timeout: timedelta = DEFAULT_DELIVERY_TIMEOUT,
    ) -> None:
        """`delivery_timeout`: a delivery attempt's (`REJOIN_DELIVERY_TIMEOUT`), which bounds an
        integration's own read timeout (`Redacting.read_timeout`)."""
        self.delivery_timeout = delivery_timeout
        # The allow-list admits admin-configured internal relays; Web Push endpoints, which shoppers
        # supply, are called without it (`webpush.py::shopper_caller`).
        guard = UrlGuard.of(allow_private_urls, allowed_targets)
        self.context = AdapterContext(
            HttpCaller(http, guard), http2=HttpCaller(http2, guard) if http2 is not None else None
        )
        self.limiter = RateLimiter()
        self._by_kind: dict[str, Provider] = {"outbox": OutboxProvider(store)}
        for kind, cls in ADAPTERS.items():
            self._by_kind[kind] = Redacting(cls(self.context), delivery_timeout)

    def for_kind(self, kind: str) -> Provider:
        provider = self._by_kind.get(kind)
        if provider is None:
            raise ConfigurationError(f"no provider adapter for integration kind '{kind}'")
        return provider

    async def refused_urls(self, config: dict[str, Any]) -> tuple[str, str] | None:
        """(dotted field, reason) of the first URL in `config` the SSRF guard refuses, if any.

        Only refusals count: a host that does not resolve right now is left to send time. A URL
        with credentials in it (`user:pw@`) is refused too: send time refuses it, and its host is
        easily misread (`http://127.0.0.1:9532@evil.example` goes to evil.example). So is plain
        http where the guard requires https (`url_guard.py::UrlGuard.https_only`).
        """
        guard = self.context.caller.guard
        for path, url in _urls(config):
            parts = urlsplit(url)
            if parts.username is not None or parts.password is not None:
                return path, "a URL may not carry credentials (user:password@): put them in the auth configuration"
            # Twilio calls the status callback; no credential of ours goes there, so http may stay.
            checker = replace(guard, https_only=False) if path.endswith("status_callback") else guard
            refusal = await save_time_refusal(checker, url)
            if refusal is not None:
                return path, refusal
        # The SMTP server, checked like URLs (send time resolves it through the same guard).
        host, port = config.get("host"), config.get("port")
        if isinstance(host, str) and isinstance(port, int):
            try:
                await guard.resolve_host(host, port)
            except RefusedAddress as exc:
                return "host", str(exc)
            except (ConfigurationError, ProviderError):  # not resolvable now: send time checks again
                pass
        return None

    def read_timeout(self, config: dict[str, Any]) -> float:
        """The read timeout of this integration's calls: its own within the attempt's share, else
        the default one (what the worker's client uses: `provider_call_timeouts`)."""
        return provider_call_timeouts(self.delivery_timeout, configured_timeout(config))[0]

    async def validate(self, kind: str, config: dict[str, Any]) -> None:
        """Save-time checks that need the network (credentials against a token URL)."""
        provider = self.for_kind(kind)
        if isinstance(provider, Redacting):
            await provider.validate(config)

    async def send(self, kind: str, message: OutboundMessage) -> ProviderResponse:
        """Wait for the integration's rate limit, then call its adapter."""
        provider = self.for_kind(kind)
        await self.limiter.acquire(message.integration_id, message.config.get("rate_limit_per_second"))
        return await provider.send(message)
