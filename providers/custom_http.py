"""Custom HTTP integration: POST the rendered JSON payload to the configured URL.

Auth in this module: No Auth plus configured headers. Every request carries the send's
idempotency key (`Idempotency-Key`) so a provider that honours it delivers once even when a
call whose outcome was unknown is repeated. Redirects are not followed (a 3xx is a permanent
failure): following them would let a provider bounce us to an internal address.
"""

from __future__ import annotations

import httpx

from providers.base import OutboundMessage, ProviderError, ProviderResponse, classify_http
from providers.url_guard import check_url


class CustomHttpProvider:
    honours_idempotency_key = False  # unknown for an arbitrary endpoint: repeats are flagged

    def __init__(self, http: httpx.AsyncClient, *, allow_private_urls: bool) -> None:
        self.http = http
        self.allow_private_urls = allow_private_urls

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        url = str(message.config.get("url", ""))
        await check_url(url, allow_private=self.allow_private_urls)
        headers = {str(k): str(v) for k, v in (message.config.get("headers") or {}).items()}
        headers.update({str(k): str(v) for k, v in (message.secrets.get("headers") or {}).items()})
        headers["Idempotency-Key"] = message.idempotency_key
        try:
            resp = await self.http.post(url, json=message.payload, headers=headers, follow_redirects=False)
        except httpx.TimeoutException as exc:
            # The request may have reached the provider: a retry is a possible duplicate.
            raise ProviderError(f"timeout: {exc!r}", retryable=True, outcome_unknown=True) from exc
        except httpx.TransportError as exc:
            unknown = not isinstance(exc, httpx.ConnectError)
            raise ProviderError(f"connection error: {exc!r}", retryable=True, outcome_unknown=unknown) from exc
        body = resp.text
        lowered = {k.lower(): v for k, v in resp.headers.items()}
        error = classify_http(resp.status_code, body, lowered)
        if error is not None:
            raise error
        return ProviderResponse(
            status=resp.status_code,
            body=body[:2000],
            headers=lowered,
            message_id=lowered.get("x-message-id") or lowered.get("x-request-id"),
        )
