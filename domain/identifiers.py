"""Identifier values as they enter Rejoin: phone numbers normalised to E.164, Web Push subscriptions checked.

One place for these rules, so an opt-in, an opt-out and an identification event give the same
stored value and hash for the same phone however it was typed, and a value no send could ever
use is refused when it arrives (a 422 naming the field) instead of failing every send later.
Raised as `ValueError`, callers name the field. Stdlib only, but for the URL guard's address rules
(`domain/addresses.py::local_literal`, no DNS) on Web Push endpoints.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import urlsplit

from domain.addresses import local_literal

# Separators people type inside phone numbers ("+1 (555) 123-4567", "+44.20.7946.0000").
_PHONE_SEPARATORS = re.compile(r"[\s\-.()]")
# E.164: a "+", a country code (never starting with 0) and at most 15 digits in all.
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
P256_POINT_BYTES = 65  # an uncompressed P-256 point: 0x04, x, y (RFC 8291 3.1)
AUTH_SECRET_BYTES = 16  # RFC 8291 3.2


def normalize_phone(value: str) -> str:
    """The E.164 form (`+15551234567`) of a phone number written with spaces, dashes, dots or
    parentheses; `ValueError` when what is left is not a "+" and 8 to 15 digits."""
    compact = _PHONE_SEPARATORS.sub("", value)
    if not _E164.match(compact):
        raise ValueError("phone numbers must be E.164: a leading + and 8 to 15 digits, e.g. +15551234567")
    return compact


# A phone stored as digits alone: subscriber lists synced before phones kept their "+".
_BARE_PHONE_DIGITS = re.compile(r"^[1-9]\d{7,14}$")


def stored_phone_as_e164(value: str) -> str:
    """A stored SMS recipient in E.164: lists synced before phones kept their "+" stored
    "15551230000", which vendors took for a local number; the next sync stores "+15551230000"
    (same hash), and until then a send reads it right. Anything else is returned as it is."""
    return "+" + value if _BARE_PHONE_DIGITS.match(value) else value


def sendable_recipient(channel: str, stored: str) -> str:
    """A decrypted opt-in value as a vendor takes it: SMS phones in E.164, others as stored.
    Journeys' sends and batched runs both read recipients through this."""
    return stored_phone_as_e164(stored) if channel == "sms" else stored


def check_web_push_subscription(value: str, *, allow_http: bool = False) -> None:
    """`ValueError` unless `value` is a browser's PushSubscription JSON: an https `endpoint`, and
    `keys.p256dh` and `keys.auth` in base64url. `allow_http` (private URLs allowed) admits an http
    endpoint and an internal one (local push service stand-ins); otherwise an endpoint spelled as a
    non-public address (any notation) or `localhost` is refused."""
    try:
        sub = json.loads(value)
    except ValueError:
        raise ValueError("a Web Push subscription must be the browser's subscription JSON") from None
    if not isinstance(sub, dict):
        raise ValueError("a Web Push subscription must be a JSON object (endpoint, keys)")
    _check_endpoint(sub.get("endpoint"), allow_http)
    keys = sub.get("keys")
    if not isinstance(keys, dict):
        raise ValueError("a Web Push subscription needs keys.p256dh and keys.auth")
    p256dh = _b64url_bytes(keys.get("p256dh"), "keys.p256dh")
    if len(p256dh) != P256_POINT_BYTES or p256dh[0] != 4:
        raise ValueError("keys.p256dh must be an uncompressed P-256 public key (65 bytes)")
    if len(_b64url_bytes(keys.get("auth"), "keys.auth")) != AUTH_SECRET_BYTES:
        raise ValueError("keys.auth must be the 16-byte auth secret")


def _check_endpoint(endpoint: Any, allow_http: bool) -> None:
    schemes = {"https", "http"} if allow_http else {"https"}
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in schemes or not parts.hostname:
        raise ValueError("a Web Push subscription needs an https endpoint URL")
    # The shopper chooses the endpoint and every send POSTs to it: an internal one is refused now
    # (by its spelling only: no DNS on the ingestion path; the send-time guard resolves and pins).
    local = None if allow_http else local_literal(parts.hostname)
    if local is not None:
        raise ValueError(f"a Web Push endpoint must be a public push service: {local}")


def strict_b64url(text: Any) -> bytes:
    """The bytes of base64url `text` (padding optional); `ValueError` for anything else. Strict:
    the default decoder drops characters outside the alphabet, so "not a key!" would pass."""
    if not isinstance(text, str) or not _B64URL.match(text):
        raise ValueError("not base64url")
    bare = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def _b64url_bytes(text: Any, name: str) -> bytes:
    try:
        return strict_b64url(text)
    except ValueError:
        raise ValueError(f"{name} must be base64url") from None
