"""Guarded outbound HTTP shared by every HTTP adapter.

Each hop is checked by the URL guard and sent to the address that was checked (pinned), with
the real host name in the Host header and TLS SNI/verification. Redirects are followed only
for 307/308 (method and body kept) to the same origin, at most `MAX_REDIRECTS` hops, each hop
checked again, so a provider cannot bounce us to an internal address nor hand our credentials to
another host. Headers that cannot be sent as given (CR, LF or NUL; framing and hop-by-hop names
that would contradict the request we build) are a `ConfigurationError` before anything is sent,
whichever client is used, and never quote the value. Transport failures become retryable
`ProviderError`s; whether the provider may have processed the request is recorded
(`outcome_unknown`), because that decides whether a repeat could duplicate. A TLS certificate
that does not verify is the exception: permanent, since every retry fails the same way.
A whole request (connection, sending, the answer's last byte) has a deadline, the read timeout:
the worker's default (`provider_call_timeouts`), or the integration's own `timeout_seconds`
(`call_timeout`, set by the registry around each call), within the same share of the attempt.

Two transports sit behind the same caller: aiohttp (the worker's HTTP/1.1 sends: its pool stays
fast with 100 sends in flight, where one shared httpx client collapses to ~120 req/s, see
docs/performance.md) and httpx (APNs, which needs HTTP/2, and callers that pass an httpx client).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
import h11
import httpx

from providers.base import ConfigurationError, ProviderError, ProviderResponse, classify_http
from providers.url_guard import Target, UrlGuard

MAX_REDIRECTS = 3
REDIRECTS = {301, 302, 303, 307, 308}
# Adapters keep at most 2,000 characters of an answer; reading more only costs memory.
MAX_RESPONSE_BYTES = 1 << 20
PROVIDER_READ_TIMEOUT_S = 10.0  # a provider's silence, at most (seconds)
PROVIDER_CONNECT_TIMEOUT_S = 5.0
TIMEOUT_ERROR = "timeout"  # how a ProviderError for a timed-out call begins
# A line break would end the header and start another (injection); NUL is refused by servers.
FORBIDDEN_IN_VALUES = "\r\n\0"
# RFC 7230 `token`: what a header name may be.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# The client frames the request and sets Host itself (the pinned address needs it); a configured
# one would contradict it (a short Content-Length smuggles the rest of the body as a second
# request, a second Host is refused by h11) or change the connection under the pool.
RESERVED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "host", "connection", "keep-alive", "te", "trailer", "upgrade",
     "proxy-connection"}
)  # fmt: skip


def header_problem(name: str, value: str) -> str | None:
    """Why a header cannot be sent as given, or None. The value is never quoted: it may be a secret."""
    if not HEADER_NAME.match(name):
        return "a header name must be a token (letters, digits and !#$%&'*+.^_`|~-)"
    if name.lower() in RESERVED_HEADERS:
        return f"header '{name}' is set by Rejoin's HTTP client and cannot be configured"
    if any(c in value for c in FORBIDDEN_IN_VALUES):
        return f"the value of header '{name}' contains a line break (CR or LF) or NUL"
    return None


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, with the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _unbuildable(exc: Exception) -> ConfigurationError:
    # The client refused to write the request (a header it will not send): nothing reached the
    # provider, and the same request fails the same way every time. The client's text quotes the
    # offending header value, which may be a secret, so only the exception type is kept.
    return ConfigurationError(f"the request could not be built ({type(exc).__name__}); check the configured headers")


def provider_call_timeouts(delivery_timeout: timedelta, read: float | None = None) -> tuple[float, float]:
    """(read, connect) seconds for provider calls: the defaults (`read`: the integration's own,
    `timeout_seconds`, instead of `PROVIDER_READ_TIMEOUT_S`), or less when a delivery attempt
    (`REJOIN_DELIVERY_TIMEOUT`) is shorter: at most `call_budget` of it, so that a silent provider
    times out inside the attempt, which records it (outcome unknown: retried with the same key,
    flagged) and logs one line, rather than Temporal's start-to-close timeout cancelling the
    attempt mid-call. The read value is also the deadline of a whole request, body included
    (`outbound_session`, the transports), so an answer trickled a byte at a time times out the
    same way.

    The worker's sends and the API's test call both use it (the registry applies an integration's
    own value: `providers/registry.py::Redacting`), so a test call that succeeds means a delivery
    would not time out on the same answer."""
    budget = call_budget(delivery_timeout)
    return min(read or PROVIDER_READ_TIMEOUT_S, budget), min(PROVIDER_CONNECT_TIMEOUT_S, budget)


def call_budget(delivery_timeout: timedelta) -> float:
    """The longest a provider call may take within a delivery attempt: 80% of it (the rest: the
    attempt's store steps). An integration's `timeout_seconds` above it is clipped to it."""
    return 0.8 * delivery_timeout.total_seconds()


# The read timeout of the calls made inside `call_timeout(...)`: an integration's own
# (`timeout_seconds`), set by the registry around its adapter's call; None: the client's default.
_CALL_TIMEOUT: ContextVar[float | None] = ContextVar("provider_call_timeout", default=None)


@contextmanager
def call_timeout(seconds: float | None) -> Iterator[None]:
    """Calls made inside (by any adapter, token fetches included) wait `seconds` for the provider,
    the whole request's deadline, instead of the client's default; None changes nothing."""
    token = _CALL_TIMEOUT.set(seconds)
    try:
        yield
    finally:
        _CALL_TIMEOUT.reset(token)


@dataclass(frozen=True)
class Body:
    json: Any = None
    data: dict[str, Any] | None = None
    content: bytes | None = None


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    text: str


class Transport(Protocol):
    async def send(
        self, method: str, target: Target, headers: dict[str, str], body: Body, timeout: float | None
    ) -> RawResponse:
        """Send to `target.ip` presenting `target.host`; ProviderError on transport failure."""
        ...


def _timeout_error(exc: Exception, unknown: bool) -> ProviderError:
    return ProviderError(f"{TIMEOUT_ERROR}: {type(exc).__name__}", retryable=True, outcome_unknown=unknown)


def is_timeout(err: ProviderError) -> bool:
    """Whether `err` is a call that timed out (as made by the transports here)."""
    return err.message.startswith(f"{TIMEOUT_ERROR}:")


CERTIFICATE_ERROR = "TLS certificate verification failed"  # how such a ProviderError begins


def _certificate_problem(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a connection error, if that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        # aiohttp's wrapper (itself an ssl.CertificateError) holds ssl's error.
        if isinstance(current, aiohttp.ClientConnectorCertificateError):
            current = current.certificate_error
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _connection_error(exc: Exception, unknown: bool) -> ProviderError:
    # The cause (refused, reset, TLS verification) helps the marketer; it holds no secrets.
    problem = _certificate_problem(exc)
    if problem is not None:
        # A certificate that does not verify (self-signed, expired, for another name) fails the
        # same way on every retry: a configuration to fix, not an outage to wait out. Nothing was
        # sent (the handshake failed first).
        detail = getattr(problem, "verify_message", None) or getattr(problem, "reason", None) or str(problem)
        return ProviderError(
            f"{CERTIFICATE_ERROR} ({detail}), not retried: the provider's certificate must be valid for its "
            f"host name and signed by a trusted authority; {type(exc).__name__}: {str(exc)[:300]}",
            retryable=False,
        )
    return ProviderError(
        f"connection error: {type(exc).__name__}: {str(exc)[:300]}", retryable=True, outcome_unknown=unknown
    )


class HttpxTransport:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(
        self, method: str, target: Target, headers: dict[str, str], body: Body, timeout: float | None
    ) -> RawResponse:
        extensions: dict[str, Any] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        if timeout is not None:
            # The connect limit stays the client's (5 s, or less): only the wait for the answer changes.
            connect = self.client.timeout.connect
            extensions["timeout"] = httpx.Timeout(timeout, connect=min(connect or timeout, timeout)).as_dict()
        kwargs: dict[str, Any] = {k: v for k, v in vars(body).items() if v is not None}
        deadline = timeout if timeout is not None else self.client.timeout.read
        try:
            request = self.client.build_request(
                method, target.pinned_url, headers=headers, extensions=extensions, **kwargs
            )
            # httpx times each read, not the exchange: a provider trickling its answer (a byte a
            # second) would never time out. The deadline bounds the whole call.
            async with asyncio.timeout(deadline):
                resp = await self.client.send(request, follow_redirects=False)
        except (httpx.LocalProtocolError, h11.LocalProtocolError, ValueError) as exc:
            raise _unbuildable(exc) from None
        except httpx.TimeoutException as exc:
            # Connect timeouts never reached the provider; read/write timeouts may have.
            raise _timeout_error(exc, not isinstance(exc, httpx.ConnectTimeout)) from exc
        except TimeoutError as exc:  # the deadline: the request may have been processed
            raise _timeout_error(exc, True) from exc
        except httpx.TransportError as exc:
            raise _connection_error(exc, not isinstance(exc, httpx.ConnectError)) from exc
        return RawResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.text)


class AiohttpTransport:
    """aiohttp: connects to the pinned IP; `server_hostname` carries SNI and the name verified."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(
        self, method: str, target: Target, headers: dict[str, str], body: Body, timeout: float | None
    ) -> RawResponse:
        kwargs: dict[str, Any] = {k: v for k, v in vars(body).items() if v is not None}
        if "content" in kwargs:
            kwargs["data"] = kwargs.pop("content")
        if target.scheme == "https":
            kwargs["server_hostname"] = target.host
        if timeout is not None:
            # The TCP/TLS set-up limit stays the session's (5 s, or less): only the wait for the answer changes.
            connect = self.session.timeout.sock_connect
            kwargs["timeout"] = aiohttp.ClientTimeout(
                total=timeout, connect=timeout, sock_connect=min(connect or timeout, timeout), sock_read=timeout
            )
        try:
            async with self.session.request(
                method, target.pinned_url, headers=headers, allow_redirects=False, **kwargs
            ) as resp:
                raw = await _read_capped(resp)
                try:
                    text = raw.decode(resp.charset or "utf-8", errors="replace")
                except LookupError:  # an unknown charset name
                    text = raw.decode("utf-8", errors="replace")
                return RawResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, text)
        except aiohttp.ConnectionTimeoutError as exc:
            # Waiting for a pooled connection or connecting: nothing was sent.
            raise _timeout_error(exc, False) from exc
        except TimeoutError as exc:
            raise _timeout_error(exc, True) from exc
        except aiohttp.ClientConnectorError as exc:
            # Refused, unreachable or TLS verification failed: the request never left.
            raise _connection_error(exc, False) from exc
        except ValueError as exc:
            # aiohttp refuses a control character in a header before writing anything.
            raise _unbuildable(exc) from None
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            # Reset, disconnect or a cut body after sending: the provider may have processed it.
            raise _connection_error(exc, True) from exc


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The body up to MAX_RESPONSE_BYTES; a body cut short raises ClientPayloadError."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE_BYTES:
        chunk = await resp.content.read(MAX_RESPONSE_BYTES - size)  # at most n bytes, b"" at the end
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def outbound_session(
    *,
    limit: int = 200,
    timeout: float = PROVIDER_READ_TIMEOUT_S,
    connect: float = PROVIDER_CONNECT_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
    total: float | None = None,
) -> aiohttp.ClientSession:
    """The worker's pooled aiohttp session: bounded connections, reused across messages.

    `total` (default: `timeout`, the read budget) bounds a whole request, from waiting for a
    connection to the last byte of the answer: silence is bounded by `timeout` between reads, but a
    provider trickling its answer (a byte every 2 s) would otherwise run the attempt into Temporal's
    start-to-close timeout, which cancels it mid-call instead of recording a timeout.

    Open inside a running event loop and close it (`async with`) on exit.
    """
    connector = aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=0,  # one busy provider may use the whole pool, as with httpx
        use_dns_cache=False,  # the URL guard resolves; we only ever connect to literal IPs
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # connect = pool wait + TCP/TLS set-up; sock_read = silence between reads (as httpx's read);
        # total = the whole exchange, body included.
        timeout=aiohttp.ClientTimeout(
            total=timeout if total is None else total, connect=timeout, sock_connect=connect, sock_read=timeout
        ),
        auto_decompress=True,
        raise_for_status=False,
        trust_env=False,
    )


def as_transport(http: httpx.AsyncClient | aiohttp.ClientSession | Transport) -> Transport:
    if isinstance(http, httpx.AsyncClient):
        return HttpxTransport(http)
    if isinstance(http, aiohttp.ClientSession):
        return AiohttpTransport(http)
    return http


class HttpCaller:
    def __init__(self, http: httpx.AsyncClient | aiohttp.ClientSession | Transport, guard: UrlGuard) -> None:
        self.transport = as_transport(http)  # one pooled client per process: bounded, reused
        self.guard = guard

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        json: Any = None,
        data: dict[str, Any] | None = None,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> ProviderResponse:
        """Send and return whatever the provider answered (any status). `timeout`: this call's
        read timeout; None: the integration's (`call_timeout`), else the client's default."""
        if timeout is None:
            timeout = _CALL_TIMEOUT.get()
        body = Body(json=json, data=data, content=content)
        for name, value in (headers or {}).items():
            problem = header_problem(name, value)
            if problem is not None:
                raise ConfigurationError(problem)
        start = origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            target = await self.guard.resolve(url)
            hdrs = dict(headers or {})
            hdrs["Host"] = target.host_header
            resp = await self.transport.send(method, target, hdrs, body, timeout)
            lowered = resp.headers
            if resp.status in REDIRECTS and "location" in lowered:
                if resp.status not in {307, 308}:
                    raise ProviderError(
                        f"provider redirected ({resp.status}) to {lowered['location']}: not followed",
                        retryable=False,
                        status=resp.status,
                        headers=lowered,
                    )
                url = urljoin(url, lowered["location"])
                if origin(url) != start:
                    # Our headers carry the vendor's credentials (API key, Basic, a bearer token):
                    # replaying them to another host would hand them over. Vendors do not move API
                    # calls across hosts, so this is refused rather than followed without them.
                    # An internal target keeps the guard's own refusal, which names the address.
                    await self.guard.resolve(url)
                    scheme, host, port = origin(url)
                    raise ProviderError(
                        f"provider redirected ({resp.status}) to another host ({scheme}://{host}:{port}): not followed",
                        retryable=False,
                        status=resp.status,
                        headers=lowered,
                    )
                continue
            return ProviderResponse(status=resp.status, body=resp.text, headers=lowered)
        raise ConfigurationError(f"more than {MAX_REDIRECTS} redirects")

    async def call(
        self, method: str, url: str, *, explain: Callable[[str], str | None] | None = None, **kwargs: Any
    ) -> ProviderResponse:
        """Send; raise the classified ProviderError unless the answer is 2xx. `explain`: the
        adapter's reading of its vendor's error words in an answer body (`classify_http`)."""
        resp = await self.request(method, url, **kwargs)
        error = classify_http(resp.status, resp.body, resp.headers, explain)
        if error is not None:
            raise error
        return ProviderResponse(status=resp.status, body=resp.body[:2000], headers=resp.headers)
