"""Guarded outbound HTTP shared by every HTTP adapter.

Each hop is checked by the URL guard and sent to the address that was checked (pinned), with
the real host name in the Host header and TLS SNI/verification. Redirects are followed only
for 307/308 (method and body kept), at most `MAX_REDIRECTS` hops, each hop checked again, so a
provider cannot bounce us to an internal address. Transport failures become retryable
`ProviderError`s; whether the provider may have processed the request is recorded
(`outcome_unknown`), because that decides whether a repeat could duplicate.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import httpx

from providers.base import ConfigurationError, ProviderError, ProviderResponse, classify_http
from providers.url_guard import UrlGuard

MAX_REDIRECTS = 3
REDIRECTS = {301, 302, 303, 307, 308}


class HttpCaller:
    def __init__(self, http: httpx.AsyncClient, guard: UrlGuard) -> None:
        self.http = http  # one pooled client per process: bounded connections, reused
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
        """Send and return whatever the provider answered (any status)."""
        body: dict[str, Any] = {}
        if json is not None:
            body["json"] = json
        if data is not None:
            body["data"] = data
        if content is not None:
            body["content"] = content
        for _ in range(MAX_REDIRECTS + 1):
            target = await self.guard.resolve(url)
            hdrs = dict(headers or {})
            hdrs["Host"] = target.host_header
            extensions: dict[str, Any] = {}
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
            if timeout is not None:
                extensions["timeout"] = httpx.Timeout(timeout).as_dict()
            try:
                request = self.http.build_request(method, target.pinned_url, headers=hdrs, extensions=extensions, **body)
                resp = await self.http.send(request, follow_redirects=False)
            except httpx.TimeoutException as exc:
                # Connect timeouts never reached the provider; read/write timeouts may have.
                unknown = not isinstance(exc, httpx.ConnectTimeout)
                raise ProviderError(f"timeout: {type(exc).__name__}", retryable=True, outcome_unknown=unknown) from exc
            except httpx.TransportError as exc:
                unknown = not isinstance(exc, httpx.ConnectError)
                # The cause (refused, reset, TLS verification) helps the marketer; it holds no secrets.
                raise ProviderError(
                    f"connection error: {type(exc).__name__}: {str(exc)[:200]}", retryable=True, outcome_unknown=unknown
                ) from exc
            lowered = {k.lower(): v for k, v in resp.headers.items()}
            if resp.status_code in REDIRECTS and "location" in lowered:
                if resp.status_code not in {307, 308}:
                    raise ProviderError(
                        f"provider redirected ({resp.status_code}) to {lowered['location']}: not followed",
                        retryable=False,
                        status=resp.status_code,
                        headers=lowered,
                    )
                url = urljoin(url, lowered["location"])
                continue
            return ProviderResponse(status=resp.status_code, body=resp.text, headers=lowered)
        raise ConfigurationError(f"more than {MAX_REDIRECTS} redirects")

    async def call(self, method: str, url: str, **kwargs: Any) -> ProviderResponse:
        """Send; raise the classified ProviderError unless the answer is 2xx."""
        resp = await self.request(method, url, **kwargs)
        error = classify_http(resp.status, resp.body, resp.headers)
        if error is not None:
            raise error
        return ProviderResponse(status=resp.status, body=resp.body[:2000], headers=resp.headers)
