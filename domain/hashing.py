"""Identifier hashes: how an email, phone number or other identifier is found without keeping it.

A module of its own (stdlib only) so that the subscriber-list seal helpers
(`activities/seal_pool.py`) hash rows without importing the event schemas (pydantic: ~0.3 s of
CPU per helper, per sync). `domain.events` re-exports these names.
"""

from __future__ import annotations

import hashlib


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def email_hash(email: str) -> str:
    """The Experience API's hashed email: SHA-256 hex of the lower-cased address."""
    return sha256_hex(email.strip().lower())


def phone_hash(phone: str) -> str:
    digits = "".join(ch for ch in phone if ch.isdigit())
    return sha256_hex("+" + digits)
