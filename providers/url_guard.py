"""Outbound URL guard (SSRF): provider URLs may not reach internal addresses.

Loopback, private, link-local (cloud metadata), multicast, reserved and unspecified addresses
are refused unless the operator allows private targets (local development and tests do) or
lists the exact `host:port` in the allow-list. Every address a hostname resolves to is
checked; IPv4 embedded in IPv6 (mapped, 6to4, Teredo, NAT64) is unwrapped; the shorthand
IPv4 notations inet_aton accepts (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`) are
normalised before the check. Provider URLs must be https (they carry credentials) unless
private targets are allowed or the `host:port` is allow-listed (local stand-ins).

The check returns a `Target` with the address that was checked; callers connect to that
address (the host name travels in the Host header and TLS SNI), so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot redirect the call.

A resolver that does not answer in time, or answers "try again" (EAI_AGAIN), is a passing fault,
not a wrong configuration: the lookup raises a retryable ProviderError, so the send (or the feed
sync) is retried rather than failed for good, and no caller waits on a stuck resolver for ever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from domain.addresses import IP, is_internal, literal_ip
from providers.base import ConfigurationError, ProviderError

# A vendor host's DNS answer is used this long (seconds) before it is resolved again (`UrlGuard._addresses`).
DNS_TTL_S = 30.0
# How long one lookup may take (the system resolver's own retries can take far longer, and a stuck
# one held a send, or a feed sync's attempt, until Temporal's timeout).
DNS_TIMEOUT_S = 10.0
DNS_CACHE_HOSTS = 1024
_clock = time.monotonic  # the kept answers' clock (a test moves it)


class RefusedAddress(ConfigurationError):
    """The URL points at an address the guard does not allow (as opposed to a malformed URL)."""


class InsecureUrl(RefusedAddress):
    """A plain-http URL where https is required: the call would carry credentials in clear."""


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `ip`, present `host` (Host header, SNI)."""

    url: str  # the original URL
    scheme: str
    host: str
    port: int
    ip: str

    @property
    def pinned_url(self) -> str:
        """The URL with the host replaced by the checked address."""
        parts = urlsplit(self.url)
        ip_host = f"[{self.ip}]" if ":" in self.ip else self.ip
        netloc = f"{ip_host}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_url_shape(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise ConfigurationError(f"URL scheme must be http or https: {parts.scheme or 'none'}")
    if not parts.hostname:
        raise ConfigurationError("URL has no host")
    if parts.username or parts.password:
        raise ConfigurationError("URL must not embed credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigurationError(f"URL has an invalid port: {exc}") from exc
    return parts.scheme, parts.hostname, port


@dataclass(frozen=True)
class UrlGuard:
    allow_private: bool = False
    # Exact `host:port` pairs an operator allows even though they are internal.
    allowed_targets: frozenset[str] = field(default_factory=frozenset)
    # Provider calls carry credentials (API keys, Basic, bearer tokens, client secrets): over
    # plain http anyone on the path reads them. Only local stand-ins (private URLs allowed, or an
    # operator's allow-listed internal `host:port`) may be http.
    https_only: bool = True
    # Host answers kept DNS_TTL_S: (host, port) -> (expiry, addresses) (`_addresses`). Per guard (the
    # worker's registry holds one); `dataclasses.replace` starts a copy with none.
    _answers: dict[tuple[str, int], tuple[float, list[IP]]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @classmethod
    def of(cls, allow_private: bool, allowed: Iterable[str] = ()) -> UrlGuard:
        return cls(allow_private, frozenset(a.strip().lower() for a in allowed if a.strip()))

    def _allowed(self, host: str, port: int) -> bool:
        return self.allow_private or f"{host.lower()}:{port}" in self.allowed_targets

    async def resolve(self, url: str) -> Target:
        """Check `url` and return the address to connect to; ConfigurationError when refused."""
        scheme, host, port = check_url_shape(url)
        address = await self.resolve_host(host, port)  # first: a private address is refused as such
        if scheme != "https" and self.https_only and not self._allowed(host, port):
            raise InsecureUrl(
                f"refusing to call {host} over plain http: provider URLs must be https (credentials, "
                "recipients and messages would travel unencrypted)"
            )
        return Target(url, scheme, host, port, address)

    async def resolve_host(self, host: str, port: int) -> str:
        """The checked address to connect to for `host` (any protocol, e.g. SMTP)."""
        allowed = self._allowed(host, port)
        ip = literal_ip(host)
        if ip is not None:
            if is_internal(ip) and not allowed:
                raise RefusedAddress(f"refusing to call {host}: not a public address ({ip})")
            return str(ip)
        addresses = await self._addresses(host, port)
        if not addresses:
            raise ConfigurationError(f"cannot resolve host {host}")
        if not allowed:
            for addr in addresses:
                # Every answer is checked: a resolver may hand out a different one next time.
                if is_internal(addr):
                    raise RefusedAddress(f"refusing to call {host}: resolves to a non-public address ({addr})")
        # Prefer IPv4 (the local test servers and most vendors listen there).
        return str(sorted(addresses, key=lambda a: a.version)[0])

    async def _addresses(self, host: str, port: int) -> list[IP]:
        """What `host` resolves to, resolved at most once per DNS_TTL_S by this guard: a fan-out calls
        one vendor hundreds of times a second, and each `getaddrinfo` took a thread of the loop's
        default executor (shared with the store steps) and, without a resolver cache on the host, a
        DNS round trip. Safe for the guard: the answer is checked on every use (`resolve_host`) and
        the connection pinned to a checked address, whatever the resolver says meanwhile. Failures
        are not kept."""
        key = (host.lower(), port)
        now = _clock()
        kept = self._answers.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        lookup = asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        try:
            infos = await asyncio.wait_for(lookup, DNS_TIMEOUT_S)
        except TimeoutError:
            raise ProviderError(
                f"cannot resolve host {host}: no DNS answer within {DNS_TIMEOUT_S:g} s", retryable=True
            ) from None
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise ProviderError(f"cannot resolve host {host} right now: {exc}", retryable=True) from None
            raise ConfigurationError(f"cannot resolve host {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if addresses:
            if len(self._answers) >= DNS_CACHE_HOSTS:
                self._answers.clear()  # a bound, not an LRU: a worker calls a handful of vendor hosts
            self._answers[key] = (now + DNS_TTL_S, addresses)
        return addresses


async def check_url(url: str, *, allow_private: bool, https_only: bool = False) -> None:
    """Raise ConfigurationError when `url` may not be called (a product feed's URL: no credentials
    travel there, so plain http stays allowed unless asked)."""
    await UrlGuard(allow_private, https_only=https_only).resolve(url)


async def save_time_refusal(guard: UrlGuard, url: str) -> str | None:
    """Why `guard` refuses `url`'s address (a configuration saved with it would fail at every call),
    or None; a host that does not resolve right now is left to call time, which checks again."""
    try:
        await guard.resolve(url)
    except RefusedAddress as exc:
        return str(exc)
    except (ConfigurationError, ProviderError):  # not resolvable now: checked again at call time
        return None
    return None
