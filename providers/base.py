"""What every provider adapter speaks: one outbound message in, a classified outcome out.

Adapters translate HTTP answers at the boundary: 2xx accepted; 429, 408, 5xx, timeouts and
connection errors retryable (honouring Retry-After); every other answer permanent. Delivery
(`activities/delivery.py`) turns these into Temporal retries or recorded failures.

What Rejoin keeps of an answer is masked (`kept_answer`): vendors echo the request, so an error
body quotes the address it refused and Twilio's message resource repeats `to`. An error's text
is masked when the error is made, since it travels on into the send row, the decision trace,
the journey's result and the Temporal history of a retried attempt; an accepted answer's body
is masked where delivery stores it (adapters parse the raw body first, for the message id).
A `ConfigurationError` is Rejoin's own words (a refused URL keeps its address readable); the one
that quotes a vendor, a refused token, masks the quote (`oauth.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from security.redact import mask

# The longest provider answer kept with a send (what an operator needs to see why it failed).
KEPT_ANSWER_CHARS = 2000
# Read past the cut before masking, so an address that straddles it is still recognised whole
# (254 characters is the longest valid e-mail address), without masking a megabyte of body.
_ADDRESS_MARGIN = 254


def kept_answer(text: str, limit: int = KEPT_ANSWER_CHARS) -> str:
    """A provider's answer as Rejoin stores and shows it: e-mail addresses and phone numbers
    masked, then cut to `limit`. A `ProviderError` keeps its body through this, so adapters
    pass error bodies whole."""
    return mask(text[: limit + _ADDRESS_MARGIN])[:limit]


@dataclass(frozen=True)
class OutboundMessage:
    section_id: str
    integration_id: str
    channel: str
    recipient: str
    payload: dict[str, Any]
    idempotency_key: str
    config: dict[str, Any] = field(default_factory=dict)  # secrets merged back in (never logged)
    secrets: dict[str, Any] = field(default_factory=dict)
    campaign_name: str = ""
    step_name: str = ""


@dataclass(frozen=True)
class ProviderResponse:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    message_id: str | None = None


class ProviderError(Exception):
    """A provider call that did not succeed.

    `retryable`: worth trying again (429/5xx/timeout). `outcome_unknown`: the request may have
    been processed (timeout after sending), so a retry is a possible duplicate. `recipient_gone`:
    the provider says this address/token will never work again (a push token unregistered, a
    subscription expired), so delivery opts it out instead of failing on it at every send.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
        outcome_unknown: bool = False,
        headers: dict[str, str] | None = None,
        recipient_gone: bool = False,
    ) -> None:
        message, body = mask(message), kept_answer(body)
        super().__init__(message)
        self.recipient_gone = recipient_gone
        self.message = message
        self.retryable = retryable
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown
        self.headers = headers or {}


class ConfigurationError(Exception):
    """The integration cannot work as configured (bad URL, refused address): not retryable."""


class Provider(Protocol):
    # True when the vendor de-duplicates on our idempotency key, so a repeat after an unknown
    # outcome cannot deliver twice.
    honours_idempotency_key: bool

    async def send(self, message: OutboundMessage) -> ProviderResponse: ...


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds or as an HTTP date; None when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# A rate-limit reset further ahead than this is a misread header (milliseconds, a clock far off),
# not a throttling window: vendors reset per second or per minute. Back-off is safer then, since a
# next-retry delay past the delivery budget makes Temporal give the step up at once.
MAX_RATE_LIMIT_RESET_S = 3600.0


def parse_rate_limit_reset(value: str | None, now: float | None = None) -> float | None:
    """Seconds until `X-RateLimit-Reset` (unix epoch seconds, as SendGrid sends it): a Retry-After
    equivalent, never negative; None when absent, unparseable or implausibly far."""
    if not value:
        return None
    try:
        reset = float(value.strip())
    except ValueError:
        return None
    wait = reset - (time.time() if now is None else now)
    if not math.isfinite(wait) or wait > MAX_RATE_LIMIT_RESET_S:
        return None
    return max(0.0, wait)


def classify_http(status: int, body: str, headers: dict[str, str]) -> ProviderError | None:
    """None for success; otherwise the error with its retry classification."""
    if 200 <= status < 300:
        return None
    snippet = body[:500]
    if status == 429:
        return ProviderError(
            f"rate limited (429): {snippet}",
            retryable=True,
            status=status,
            body=body,
            retry_after=parse_retry_after(headers.get("retry-after")),
            headers=headers,
        )
    if status >= 500 or status == 408:
        return ProviderError(
            f"provider unavailable ({status}): {snippet}",
            retryable=True,
            status=status,
            body=body,
            retry_after=parse_retry_after(headers.get("retry-after")),
            headers=headers,
        )
    return ProviderError(
        f"rejected ({status}): {snippet}", retryable=False, status=status, body=body, headers=headers
    )


def gone_if(error: ProviderError, gone: bool) -> ProviderError:
    """Mark a permanent error as 'recipient gone' when the adapter's rule says so."""
    if gone and not error.retryable:
        error.recipient_gone = True
    return error
