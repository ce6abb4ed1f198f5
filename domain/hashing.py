"""Identifier hashes: how an email, phone number or other identifier is found without keeping it.

A module of its own (stdlib only) so that the subscriber-list seal helpers
(`activities/seal_pool.py`) hash rows without importing the event schemas (pydantic: ~0.3 s of
CPU per helper, per sync). `domain.events` re-exports these names.
"""

from __future__ import annotations

import hashlib
import json


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def email_hash(email: str) -> str:
    """The Experience API's hashed email: SHA-256 hex of the lower-cased address."""
    return sha256_hex(email.strip().lower())


def phone_hash(phone: str) -> str:
    digits = "".join(ch for ch in phone if ch.isdigit())
    return sha256_hex("+" + digits)


def web_push_endpoint(value: str) -> str | None:
    """The `endpoint` URL of a Web Push subscription JSON, or None for anything else (a legacy
    token, a JSON value without a string endpoint)."""
    try:
        sub = json.loads(value)
    except ValueError:
        return None
    endpoint = sub.get("endpoint") if isinstance(sub, dict) else None
    return (endpoint.strip() or None) if isinstance(endpoint, str) else None


def web_push_key(value: str) -> str:
    """The hash a Web Push subscription is stored and found by: that of its endpoint URL.

    A subscription's identity is its endpoint (the push service's URL for it); the JSON around it
    is not canonical: key order, whitespace, escaped slashes or `"expirationTime": null` differ by
    who serialised it (the browser, a shop backend's json.dumps), and its keys may rotate under
    the same endpoint. Hashing the raw JSON made each serialisation another opt-in, so an opt-out
    sent another way missed the opt-in it withdrew. A value that is not a subscription (a legacy
    token) keeps the hash of the raw value, as before."""
    endpoint = web_push_endpoint(value)
    return sha256_hex(endpoint if endpoint is not None else value)


def push_token_hash(channel: str, token: str) -> str:
    """The hash of a push channel's identifier: the endpoint's for Web Push, the raw token's otherwise."""
    return web_push_key(token) if channel == "web_push" else sha256_hex(token)
