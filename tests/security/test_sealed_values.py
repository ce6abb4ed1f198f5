"""Bulk-sealed values (subscriber lists): decryptable one by one, authenticated, rotatable, never plain."""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet

from security.crypto import SecretBox, sealed_token


def test_seal_many_round_trips_and_never_stores_plaintext() -> None:
    box = SecretBox([Fernet.generate_key().decode()])
    values = [f"user{i}@example.com".encode() for i in range(1000)] + ["é@x.io".encode()]
    sealed = box.seal_many(values)
    assert [box.decrypt(sealed_token(s)) for s in sealed] == [v.decode() for v in values]
    assert all(v not in s for v, s in zip(values, sealed))
    assert len({s[1:17] for s in sealed}) == 1  # one salt (one derived key) per call...
    assert len({s[17:21] for s in sealed}) == len(sealed)  # ...and a distinct nonce per value
    assert box.seal_many(values[:1])[0][1:17] != sealed[0][1:17]  # a new salt (key) per call


def test_tampered_or_foreign_tokens_are_refused() -> None:
    box = SecretBox([Fernet.generate_key().decode()])
    blob = bytearray(box.seal_many([b"a@b.com"])[0])
    blob[-1] ^= 1
    with pytest.raises(ValueError):
        box.decrypt(sealed_token(bytes(blob)))
    with pytest.raises(ValueError):
        SecretBox([Fernet.generate_key().decode()]).decrypt(sealed_token(box.seal_many([b"a@b.com"])[0]))
    with pytest.raises(ValueError):
        box.decrypt("s1." + base64.b64encode(b"\x02" + bytes(40)).decode())  # unknown version


def test_rotation_reads_old_key_and_reseals_under_new() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = sealed_token(SecretBox([old]).seal_many([b"a@b.com"])[0])
    both = SecretBox([new, old])
    assert both.decrypt(token) == "a@b.com"
    rotated = both.rotate(token)
    assert rotated.startswith("s1.") and SecretBox([new]).decrypt(rotated) == "a@b.com"


def test_copy_framing_writes_each_sealed_value_whole() -> None:
    """Rows framed from a value's pieces (`SealedParts`) hold exactly the value `seal_many` gives."""
    from store.set_copy import copy_rows

    box = SecretBox([Fernet.generate_key().decode()])
    values = [b"a@b.com", "é@x.io".encode(), b"x" * 300 + b"@example.com"]
    hashes = [bytes([i]) * 32 for i in range(len(values))]
    parts = box.seal_parts(values)
    framed, rows, at = copy_rows(hashes, parts), [], 0
    while at < len(framed):
        assert framed[at : at + 6] == b"\x00\x02\x00\x00\x00\x20"  # 2 fields, a 32-byte hash
        digest, size = framed[at + 6 : at + 38], int.from_bytes(framed[at + 38 : at + 42], "big")
        rows.append((digest, framed[at + 42 : at + 42 + size]))
        at += 42 + size
    assert rows == list(zip(hashes, parts.joined()))
    assert [box.decrypt(sealed_token(v)) for _, v in rows] == [v.decode() for v in values]
