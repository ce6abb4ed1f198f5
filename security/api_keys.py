"""API keys: `rjk_<id>_<secret>`; stored as SHA-256 of the secret, compared in constant time.

The key id is a lookup handle (not secret); the secret has 192 bits of entropy, so a plain
SHA-256 (no slow KDF) is the right storage: nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "rjk"


@dataclass(frozen=True)
class NewKey:
    key_id: str
    plaintext: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(24)
    return NewKey(key_id=key_id, plaintext=f"{PREFIX}_{key_id}_{secret}", secret_hash=hash_secret(secret))


def parse_key(presented: str) -> tuple[str, str] | None:
    """Split a presented key into (id, secret); None if it is not shaped like ours."""
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
