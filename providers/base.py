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

Vendors also repeat the credentials they refused ("authorization grant is invalid: Bearer SG.…",
an OAuth `error_description` quoting the client secret). So the masking is a `Redactor` built
from the integration's configuration (`Redactor.of`): it replaces each of its secrets, and the
forms a request carries them in (URL/form-encoded, JSON-escaped, base64, Basic `user:secret`), by
`[secret]` before masking addresses. The registry runs every send and save-time check inside
`redacting(...)` (`providers/registry.py`), so `kept_answer` and `ProviderError` made during the
call, by any adapter, use it; the one place that turns provider text into something kept.

Provider text is also made storable where it is made (`domain/text.py::storable`): a NUL
(PostgreSQL's text refuses it) and lone surrogates (what a header of invalid UTF-8 decodes to, or a JSON `\\udc80`
escape; no database nor JSON answer can encode them) become U+FFFD. A `ProviderResponse` does
this to its body, headers and message id when it is built, a `ProviderError` to its text, so a
send never fails to record the answer (a failed record made Temporal repeat the send).

A refusal's text leads with the vendor's own words when the adapter can read them from the
answer (`classify_http`'s `explain`, made with `said`: FCM's errorCode and message, SendGrid's
errors...), then the raw answer: kept reasons are cut (200 characters in a decision, 160 grouped
in delivery health), and the part that tells one cause from another must come before the cut.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

from domain.text import storable
from security.redact import mask

# The longest provider answer kept with a send (what an operator needs to see why it failed).
KEPT_ANSWER_CHARS = 2000
# Read past the cut before masking, so an address that straddles it is still recognised whole
# (254 characters is the longest valid e-mail address), without masking a megabyte of body.
_ADDRESS_MARGIN = 254


# The longest message id kept (`Send.provider_message_id` is a VARCHAR(300)).
MESSAGE_ID_CHARS = 300
# The longest lead a vendor's own error words get in a refusal's text (the raw answer follows).
SAID_CHARS = 300


def storable_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with names and values made `storable` (the same dict when nothing needed it)."""
    if all(storable(k) == k and storable(v) == v for k, v in headers.items()):
        return headers
    return {storable(k): storable(v) for k, v in headers.items()}


def storable_id(value: object) -> str | None:
    """A vendor's message id as kept: text (a JSON number as its digits), storable, at most
    `MESSAGE_ID_CHARS`; None for none, or for a JSON object or list where an id was expected."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = storable(value if isinstance(value, str) else str(value))
    return text[:MESSAGE_ID_CHARS] or None


SECRET_MASK = "[secret]"
# A secret shorter than this is masked only as a whole token (not inside a longer word), so a
# 4-character password does not garble every answer that happens to contain its letters.
MIN_ANYWHERE_SECRET = 6
# A cut answer may end in the first characters of a secret (an adapter's `body[:500]` snippet):
# such a tail is masked from this many characters on.
MIN_SECRET_TAIL = 6
# Non-secret values this long are not paired with a secret as a Basic `user:secret` credential.
_MAX_BASIC_USER = 200
_WORD = "A-Za-z0-9"


def _encodings(value: str) -> Iterator[str]:
    """The forms a request carries a secret in, which a vendor may quote back."""
    yield value
    yield quote(value, safe="")  # a form field or query parameter (client_secret_post)
    yield quote_plus(value, safe="")
    yield json.dumps(value)[1:-1]  # inside a JSON string (a PEM key's line breaks as \n)
    yield json.dumps(value)[1:-1].replace("/", "\\/")  # JSON encoders that escape "/" (PHP's)
    yield from _base64(value)


def _base64(raw: str) -> Iterator[str]:
    """Base64 with its padding, and without (as some vendors quote it)."""
    encoded = base64.b64encode(raw.encode()).decode()
    yield encoded
    yield encoded.rstrip("=")


def _basic_forms(user: str, secret: str) -> Iterator[str]:
    """`Authorization: Basic` values for `user:secret`, plain (most adapters) or form-encoded
    first (OAuth2 client_secret_basic, RFC 6749 2.3.1)."""
    for raw in (f"{user}:{secret}", f"{quote(user, safe='')}:{quote(secret, safe='')}"):
        yield from _base64(raw)


class Redactor:
    """Masks one integration's secrets, then e-mail addresses and phone numbers, in provider text.

    Built per integration (`Redactor.of(config)`); `Redactor()` masks addresses only."""

    def __init__(self, secrets: Iterable[str] = (), users: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        secrets, users = tuple(secrets), tuple(u for u in users if 0 < len(u) <= _MAX_BASIC_USER)
        self._secrets, self._users = secrets, users
        for secret in {s for s in secrets if s}:
            forms.update(_encodings(secret))
            for user in users:
                forms.update(_basic_forms(user, secret))
        forms.discard("")
        # Longest first, so a form that contains another (Basic of user:secret) is masked whole.
        self._forms = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(self._alternative(f) for f in self._forms)) if forms else None
        self.longest = len(self._forms[0]) if self._forms else 0

    @staticmethod
    def _alternative(form: str) -> str:
        if len(form) >= MIN_ANYWHERE_SECRET:
            return re.escape(form)
        return f"(?<![{_WORD}]){re.escape(form)}(?![{_WORD}])"

    @classmethod
    def of(cls, config: dict[str, Any]) -> Redactor:
        """The redactor for an integration's full configuration (secrets merged in); built once
        per distinct configuration (a send builds it for every message)."""
        from providers.secret_fields import plain_strings, secret_strings

        return _redactor_for(tuple(sorted(set(secret_strings(config)))), tuple(sorted(set(plain_strings(config)))))

    def adding(self, *secrets: str) -> Redactor:
        """This redactor masking `secrets` too (a token an integration's credentials obtained)."""
        return _redactor_for(tuple(sorted({*self._secrets, *secrets})), tuple(sorted(set(self._users))))

    def secrets(self, text: str) -> str:
        """`text` with this integration's secrets (and a secret's first characters ending it) masked."""
        if self._pattern is None or not text:
            return text
        text = self._pattern.sub(SECRET_MASK, text)
        tail = text[-MIN_SECRET_TAIL:]
        for form in self._forms:
            if len(tail) < MIN_SECRET_TAIL or tail not in form:
                continue
            # A cut answer ending inside a secret: its first characters are enough to guess it.
            for n in range(min(len(form) - 1, len(text)), MIN_SECRET_TAIL - 1, -1):
                if text.endswith(form[:n]):
                    return text[:-n] + SECRET_MASK
        return text

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        """`headers` with secrets masked (only secrets: ids and dates in headers are shown as they are)."""
        return {k: self.secrets(v) for k, v in headers.items()}

    def answer(self, resp: ProviderResponse) -> ProviderResponse:
        """A provider's answer as it leaves a call: its body and headers with secrets masked."""
        return ProviderResponse(resp.status, self.secrets(resp.body), self.headers(resp.headers), resp.message_id)

    def redact(self, text: str) -> str:
        """Secrets, then addresses and phone numbers, masked (the one rule for provider text), and
        made `storable`."""
        return storable(mask(self.secrets(text)))

    def kept(self, text: str, limit: int = 0) -> str:
        """`redact`, then cut to `limit` characters (0: no cut). Reads past the cut first, so a
        secret or an address straddling it is still recognised whole."""
        if not limit:
            return self.redact(text)
        return self.redact(text[: limit + max(_ADDRESS_MARGIN, self.longest)])[:limit]


@functools.lru_cache(maxsize=256)
def _redactor_for(secrets: tuple[str, ...], users: tuple[str, ...]) -> Redactor:
    return Redactor(secrets, users)


_REDACTOR: ContextVar[Redactor] = ContextVar("provider_redactor", default=Redactor())


def current_redactor() -> Redactor:
    """The redactor of the integration being called (addresses only outside a call)."""
    return _REDACTOR.get()


@contextmanager
def redacting(redactor: Redactor) -> Iterator[Redactor]:
    """Make `redactor` the one `kept_answer` and `ProviderError` use for the calls inside."""
    token = _REDACTOR.set(redactor)
    try:
        yield redactor
    finally:
        _REDACTOR.reset(token)


def kept_answer(text: str, limit: int = KEPT_ANSWER_CHARS) -> str:
    """A provider's answer as Rejoin stores and shows it: the integration's secrets (inside a
    `redacting` block), e-mail addresses and phone numbers masked, then cut to `limit`. A
    `ProviderError` keeps its body through this, so adapters pass error bodies whole."""
    return current_redactor().kept(text, limit)


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
    # Email: the send's one-click unsubscribe URL, for adapters that write the List-Unsubscribe
    # headers (SMTP, SendGrid); None for test calls and other channels. Not in the payload, which
    # custom HTTP, Iterable, Klaviyo... send as it is.
    unsubscribe_url: str | None = None


@dataclass(frozen=True)
class ProviderResponse:
    """A provider's answer. Its text is made `storable` as it is built, whichever adapter built it:
    everything kept of an answer (body, message id) is read from one of these."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    message_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", storable(self.body))
        object.__setattr__(self, "headers", storable_headers(self.headers))
        object.__setattr__(self, "message_id", storable_id(self.message_id))


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
        redactor = current_redactor()
        message, body = redactor.redact(message), redactor.kept(body, KEPT_ANSWER_CHARS)
        super().__init__(message)
        # What masked it: whoever turns the error into something kept later (a Temporal retry,
        # `activities/provider_retry.py`) masks with the same integration's secrets.
        self.redactor = redactor
        self.recipient_gone = recipient_gone
        self.message = message
        self.retryable = retryable
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown
        self.headers = storable_headers(headers or {})


class ConfigurationError(Exception):
    """The integration cannot work as configured (bad URL, refused address): not retryable."""


class Provider(Protocol):
    # True when the vendor de-duplicates on our idempotency key, so a repeat after an unknown
    # outcome cannot deliver twice.
    honours_idempotency_key: bool

    async def send(self, message: OutboundMessage) -> ProviderResponse: ...


# A rate-limit reset or Retry-After further ahead than this is a misread header (milliseconds, a
# clock far off, a placeholder like 99999999), not a throttling window; back-off applies then.
# Up to a day is honoured: vendors with hourly or daily quotas ask for hours, and backing off
# instead called them every few seconds to minutes for the rest of the delivery budget, each call
# another 429. A wait past what is left of the budget gives the send up at once, saying so
# (`activities/provider_retry.py::retry_later`).
MAX_RATE_LIMIT_RESET_S = 86400.0


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds or as an HTTP date; None (back-off applies) when absent,
    unparseable, not finite (`inf`, `1e400`, `nan`) or further ahead than `MAX_RATE_LIMIT_RESET_S`."""
    if not value:
        return None
    value = value.strip()
    try:
        return _plausible_wait(float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _plausible_wait((when - datetime.now(UTC)).total_seconds())


def _plausible_wait(seconds: float) -> float | None:
    if not math.isfinite(seconds) or seconds > MAX_RATE_LIMIT_RESET_S:
        return None
    return max(0.0, seconds)


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


def said(*parts: object) -> str | None:
    """A vendor's own error words (a code, a message) as one line, `code: message`; None when the
    answer gave none (parts that are missing, empty, or not text nor a number are left out)."""
    texts = [str(p) for p in parts if isinstance(p, str | int | float) and not isinstance(p, bool)]
    return ": ".join(w for w in (" ".join(t.split()) for t in texts) if w) or None


def classify_http(
    status: int, body: str, headers: dict[str, str], explain: Callable[[str], str | None] | None = None
) -> ProviderError | None:
    """None for success; otherwise the error with its retry classification.

    `explain`: the adapter's reading of its vendor's own words about the error in the answer body
    (made with `said`; called for failures only). They lead the error's text, before the raw
    answer: what is kept of a reason is cut (a decision's 200 characters, delivery health's 160),
    and the raw JSON of a vendor (FCM's `{"error": {"code": 404, ... "details": [...`) reaches its
    error code only past the cut."""
    if 200 <= status < 300:
        return None
    snippet = body[:500]
    vendor_said = explain(body) if explain is not None else None
    if vendor_said:
        snippet = f"{vendor_said[:SAID_CHARS]} | {snippet}"
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
