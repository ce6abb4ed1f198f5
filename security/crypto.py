"""Encryption at rest for secrets and PII (provider credentials, opted-in emails and phones).

Fernet (AES-128-CBC + HMAC-SHA256) via `cryptography`. Several keys may be configured: the first
encrypts, all decrypt, so rotating means prepending a new key and re-encrypting (`rotate`).

Bulk values (subscriber lists of millions of rows) are sealed by `seal_many` instead: Fernet
costs ~8 us a value in Python (cipher context, HMAC, base64 per call), most of a 10M-row sync.
`seal_many` seals each value with AES-256-GCM under a key derived (HKDF-SHA256) from the
configured key and a random 16-byte salt drawn once per call, with nonces counting up from 0
within the call: nonces never repeat under one derived key, however many values are sealed
over the key's life (random 96-bit nonces under one key would near GCM's 2^32 bound after a
few hundred 10M-row syncs). Each value stays separately authenticated and decryptable. The
sealed form is binary (stored as-is, e.g. bytea): version 1 || salt || counter (4 bytes) ||
ciphertext+tag; `sealed_token` turns it into the text token ("s1." + base64) that `decrypt`
reads beside Fernet tokens. `seal_parts` gives the same values in pieces, and `bulk_key` the
salt and derived key of one call, for the compiled bulk sealer (`store/set_copy.py: seal_rows`)
that makes the same values outside Python.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import add

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED = "s1."
_V1 = b"\x01"
_SALT, _NONCE, _COUNTER = 16, 12, 4
COUNTER_BYTES = _COUNTER
_INFO = b"rejoin sealed values v1"


MAX_SEAL = 1 << 14  # values per call (security/_bulkseal.c: MAX_ROWS)
_COUNTERS = [i.to_bytes(_COUNTER, "big") for i in range(MAX_SEAL)]  # ~1 MB, built once per process
_NONCES = [bytes(_NONCE - _COUNTER) + c for c in _COUNTERS]


@dataclass(frozen=True, slots=True)
class SealedParts:
    """Values sealed by one `seal_parts` call, in pieces: value i is prefix + counters[i] +
    bodies[i] (version and salt, the nonce's counter, ciphertext and tag). A bulk writer
    concatenates each value once, straight into its output row (`store.set_copy.copy_rows`),
    instead of building every value first (two concatenations a value, ~0.2 us each)."""

    prefix: bytes
    counters: list[bytes]  # each COUNTER_BYTES long
    bodies: list[bytes]

    def joined(self) -> list[bytes]:
        n = len(self.bodies)
        return list(map(add, map(add, repeat(self.prefix, n), self.counters), self.bodies))


def sealed_token(blob: bytes) -> str:
    """The text form of a `seal_many` value, as `SecretBox.decrypt` takes it."""
    return SEALED + base64.b64encode(blob).decode("ascii")


def _hkdf(key: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(key)


def _derive(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(_hkdf(key, salt))


class UndecryptableSecret(ValueError):
    """A stored value that none of the configured keys decrypts: a key dropped (or mistyped) while
    values encrypted under it remain, or a process started before a rotation that still lacks the
    new key. A ValueError, as `decrypt` raised before, so existing handlers keep catching it."""

    def __init__(self) -> None:
        super().__init__(
            "stored secret cannot be decrypted with the configured keys: REJOIN_SECRET_KEY must list the newest "
            "key first and every older key still in use after it (new,old); restart processes after changing it"
        )


class SecretBox:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one secret key is required")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
            self._raw = [base64.urlsafe_b64decode(k.encode()) for k in keys]
        except (ValueError, TypeError) as exc:
            raise ValueError(
                "REJOIN_SECRET_KEY must be url-safe base64 Fernet keys (32 bytes), comma-separated"
            ) from exc

    @property
    def key_count(self) -> int:
        return len(self._raw)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def seal_many(self, values: Sequence[bytes]) -> list[bytes]:
        """Seal many UTF-8 values at once (see the module docstring); binary, in the same order."""
        return self.seal_parts(values).joined()

    def seal_parts(self, values: Sequence[bytes], bulk: tuple[bytes, bytes] | None = None) -> SealedParts:
        """`seal_many`, with each value left in its pieces (see `SealedParts`); `bulk`: the
        `bulk_key()` to use (else a fresh one)."""
        n = len(values)
        if n > MAX_SEAL:
            raise ValueError(f"seal at most {MAX_SEAL} values per call")
        head, key = bulk or self.bulk_key()
        seal = AESGCM(key).encrypt
        # map() over C callables: no Python bytecode per value (this runs 10M times a sync).
        return SealedParts(head, _COUNTERS[:n], list(map(seal, _NONCES[:n], values, repeat(None, n))))

    def bulk_key(self) -> tuple[bytes, bytes]:
        """(prefix, key) for sealing one batch of at most MAX_SEAL values: the version byte and a
        fresh random salt, and the AES-256 key derived from the newest configured key and that
        salt. Use it for one batch only (nonces count from 0 in each): `seal_parts`, or the
        compiled sealer (`store.set_copy.seal_rows`), which makes the same values."""
        head = _V1 + os.urandom(_SALT)
        return head, _hkdf(self._raw[0], head[1:])

    def _unseal(self, token: str) -> str:
        blob = base64.b64decode(token[len(SEALED) :].encode())
        if blob[:1] != _V1:
            raise ValueError("unknown sealed value version")
        salt, counter, sealed = blob[1 : 1 + _SALT], blob[1 + _SALT : 1 + _SALT + _COUNTER], blob[1 + _SALT + _COUNTER :]
        nonce = bytes(_NONCE - _COUNTER) + counter
        for key in self._raw:
            try:
                return _derive(key, salt).decrypt(nonce, sealed, None).decode()
            except InvalidTag:
                continue
        raise UndecryptableSecret()

    def decrypt(self, token: str) -> str:
        if token.startswith(SEALED):
            return self._unseal(token)
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise UndecryptableSecret() from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt under the newest key; `UndecryptableSecret` if no configured key opens it."""
        if token.startswith(SEALED):
            return sealed_token(self.seal_many([self._unseal(token).encode()])[0])
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise UndecryptableSecret() from exc
