"""Access tokens: fetched once, cached per integration, refreshed before they expire.

`TokenCache.get` returns a cached token until `expires_in` minus a margin (60 s or 10 %,
whichever is smaller) has passed, then fetches a new one. Concurrent callers for the same key
share one fetch (single-flight, a lock per key). After a provider answers 401, `get(...,
rejected=token)` refetches once, unless another caller already replaced that token.

Fetchers for the grant types the adapters need live here too: OAuth2 client credentials
(RFC 6749 4.4, `client_secret_basic` or `client_secret_post`, renameable parameter names) and
the JWT-bearer grant with a Google-style service account (RFC 7523; FCM, Emarsys preset).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from providers.base import (
    ConfigurationError,
    ProviderError,
    ProviderResponse,
    current_redactor,
    kept_answer,
    redacting,
)
from providers.http import HttpCaller

DEFAULT_EXPIRES_IN = 3600.0
log = logging.getLogger(__name__)


@dataclass
class Token:
    value: str
    expires_in: float = DEFAULT_EXPIRES_IN
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. Responsys' endPoint
    fetched_at: float = 0.0

    def fresh(self, now: float) -> bool:
        margin = min(60.0, self.expires_in * 0.1)
        return now < self.fetched_at + self.expires_in - margin


Fetcher = Callable[[], Awaitable[Token]]


class TokenCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0  # how many tokens were fetched (observability, tests)

    async def get(self, key: str, fetch: Fetcher, *, rejected: str | None = None) -> Token:
        token = self._tokens.get(key)
        if token is not None and token.fresh(self._clock()) and token.value != rejected:
            return token
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)  # another caller may have refreshed while we waited
            if token is not None and token.fresh(self._clock()) and token.value != rejected:
                return token
            token = await fetch()
            token.fetched_at = self._clock()
            self.fetches += 1
            self._tokens[key] = token
            return token

    def forget(self, key: str) -> None:
        self._tokens.pop(key, None)


class TokenRejected(ConfigurationError):
    """The token endpoint refused the credentials (never retryable, shown to the marketer)."""


# A token said to last less than this (0, negative, a few seconds) is kept this long anyway: taken
# at its word it is stale at once, and every message would fetch a new one from the endpoint. A
# token that did expire earlier is refetched after the provider's 401 (`with_token`).
MIN_EXPIRES_IN = 60.0
_warned_short_expiry: set[str] = set()  # token endpoints already logged for it (once per process)


def _token_from(body: str, *, field_name: str = "access_token", endpoint: str = "") -> Token:
    try:
        data = json.loads(body)
        value = str(data[field_name])
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenRejected(f"token endpoint answered without {field_name}") from exc
    raw = data.get("expires_in")
    try:
        expires_in = DEFAULT_EXPIRES_IN if raw is None or raw == "" else float(raw)
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    if not math.isfinite(expires_in):
        expires_in = DEFAULT_EXPIRES_IN
    if expires_in < MIN_EXPIRES_IN:
        if endpoint not in _warned_short_expiry:
            _warned_short_expiry.add(endpoint)
            log.warning(
                "token endpoint %s answered expires_in=%g: the token is kept %g s instead",
                endpoint or "(unnamed)", expires_in, MIN_EXPIRES_IN,
            )  # fmt: skip
        expires_in = MIN_EXPIRES_IN
    return Token(value, expires_in)


def _raise_for_token_status(status: int, body: str, headers: dict[str, str]) -> None:
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        from providers.base import parse_retry_after

        raise ProviderError(
            f"token endpoint unavailable ({status})",
            retryable=True,
            status=status,
            retry_after=parse_retry_after(headers.get("retry-after")),
        )
    # The OAuth2 error code is safe to show; the description is the vendor's text and may echo
    # input (the client secret it refused), so it is kept short and masked like any answer Rejoin
    # keeps: `kept_answer` masks the integration's secrets inside the registry's `redacting` block.
    try:
        err = json.loads(body)
        reason = str(err.get("error", "")) + (f": {err['error_description']}" if err.get("error_description") else "")
    except (ValueError, AttributeError):
        reason = body
    raise TokenRejected(f"token endpoint refused the credentials ({status}) {kept_answer(reason, 200)}".strip())


async def client_credentials(
    caller: HttpCaller,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    client_auth: str = "basic",
    id_name: str = "client_id",
    secret_name: str = "client_secret",
    scope: str | None = None,
) -> Token:
    """RFC 6749 4.4 client-credentials grant."""
    form: dict[str, Any] = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    headers = {"Accept": "application/json"}
    if client_auth == "basic":
        # RFC 6749 2.3.1: id and secret are form-encoded before base64.
        raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    else:
        form[id_name] = client_id
        form[secret_name] = client_secret
    resp = await caller.request("POST", token_url, data=form, headers=headers)
    _raise_for_token_status(resp.status, resp.body, resp.headers)
    return _token_from(resp.body, endpoint=_endpoint(token_url))


def service_account_assertion(account: dict[str, Any], scope: str, audience: str | None = None) -> str:
    """RS256 JWT for the JWT-bearer grant (RFC 7523), signed with the account's private key."""
    import jwt

    try:
        now = int(time.time())
        claims = {
            "iss": account["client_email"],
            "scope": scope,
            "aud": audience or account["token_uri"],
            "iat": now,
            "exp": now + 3600,
        }
        headers = {"kid": account["private_key_id"]} if account.get("private_key_id") else None
        return jwt.encode(claims, account["private_key"], algorithm="RS256", headers=headers)
    except KeyError as exc:
        raise ConfigurationError(f"service account file lacks {exc.args[0]}") from None
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        # PyJWT reports an unparseable or non-RSA key as InvalidKeyError, not ValueError.
        raise ConfigurationError("service account private_key is not a valid RSA key") from exc


def rsa_key_problem(pem: Any) -> str | None:
    """Why `pem` cannot sign RS256 service-account assertions, or None when it can (a save-time
    check, so a bad key is a 422 naming the field rather than a failure at the first send)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not isinstance(pem, str):
        return "service account private_key must be a PEM string"
    try:
        # The full RSA consistency check costs ~40 ms per load and this runs on every send's config;
        # minting a token (which the save-time credentials check does) loads the key fully anyway.
        key = load_pem_private_key(pem.encode(), password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "service account private_key is not a PEM private key"
    if not isinstance(key, rsa.RSAPrivateKey):
        return "service account private_key must be an RSA key"
    return None


def signing_account(account: dict[str, Any] | None) -> dict[str, Any] | None:
    """A config's service account if its private key can sign assertions (None: none given);
    `ValueError` (a 422 at the field) if it cannot."""
    if account is None:
        return None
    problem = rsa_key_problem(account.get("private_key"))
    if problem is not None:
        raise ValueError(problem)
    return account


async def jwt_bearer(caller: HttpCaller, account: dict[str, Any], scope: str) -> Token:
    """Mint an access token from a Google-style service account (FCM HTTP v1, Emarsys preset)."""
    token_uri = str(account.get("token_uri") or "https://oauth2.googleapis.com/token")
    assertion = service_account_assertion(account, scope, token_uri)
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    resp = await caller.request("POST", token_uri, data=form, headers={"Accept": "application/json"})
    _raise_for_token_status(resp.status, resp.body, resp.headers)
    return _token_from(resp.body, endpoint=_endpoint(token_uri))


def _endpoint(url: str) -> str:
    """A token URL as logged: scheme, host and path (a query might carry a credential)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def cache_key(integration_id: str, *parts: str) -> str:
    """Tokens are keyed by integration and the credentials, so an edit never reuses an old token."""
    import hashlib

    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    return f"{integration_id}:{digest}"


def _unauthorized(resp: ProviderResponse) -> bool:
    return resp.status == 401


async def with_token(
    cache: TokenCache,
    key: str,
    fetch: Fetcher,
    call: Callable[[Token], Awaitable[ProviderResponse]],
    rejected: Callable[[ProviderResponse], bool] = _unauthorized,
) -> ProviderResponse:
    """`call` with the cached token; when the answer says the token was refused (401 by default)
    refetch the token once and call once more."""
    token = await cache.get(key, fetch)
    resp = await _masking_token(call, token)
    if rejected(resp):
        token = await cache.get(key, fetch, rejected=token.value)
        resp = await _masking_token(call, token)
    return resp


async def _masking_token(call: Callable[[Token], Awaitable[ProviderResponse]], token: Token) -> ProviderResponse:
    """`call`, with the token masked like the integration's own secrets in its answer and in the
    errors made during it: a vendor quoting back the bearer token it refused (or echoing its
    request) would otherwise show a credential that works until it expires."""
    redactor = current_redactor().adding(token.value)
    with redacting(redactor):
        resp = await call(token)
    return redactor.answer(resp)
