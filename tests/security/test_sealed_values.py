"""Bulk-sealed values (subscriber lists): decryptable one by one, authenticated, rotatable, never plain."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.fernet import Fernet

from security.crypto import MAX_SEAL, SecretBox, sealed_token
from store import set_copy
from store.set_copy import copy_rows


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



def _copy_rows_read(framed: bytes) -> list[tuple[bytes, bytes]]:
    """(hash, sealed value) of each binary COPY row (store/set_copy.py)."""
    rows, at, k = [], 0, set_copy.KEY_BYTES
    while at < len(framed):
        assert framed[at : at + 6] == b"\x00\x02" + k.to_bytes(4, "big")  # 2 fields, a KEY_BYTES key
        key, size = framed[at + 6 : at + 6 + k], int.from_bytes(framed[at + 6 + k : at + 10 + k], "big")
        rows.append((key, framed[at + 10 + k : at + 10 + k + size]))
        at += 10 + k + size
    return rows


def test_copy_framing_writes_each_sealed_value_whole() -> None:
    """Rows framed from a value's pieces (`SealedParts`) hold exactly the value `seal_many` gives."""
    box = SecretBox([Fernet.generate_key().decode()])
    values = [b"a@b.com", "é@x.io".encode(), b"x" * 300 + b"@example.com"]
    hashes = [bytes([i]) * set_copy.KEY_BYTES for i in range(len(values))]
    parts = box.seal_parts(values)
    rows = _copy_rows_read(copy_rows(hashes, parts))
    assert rows == list(zip(hashes, parts.joined()))
    assert [box.decrypt(sealed_token(v)) for _, v in rows] == [v.decode() for v in values]


VALUES = [b"a@b.com", "é@x.io".encode(), b"x" * 300 + b"@example.com", b""] + [b"u%d@ex.io" % i for i in range(3000)]


@pytest.mark.skipif(set_copy.compiled is None, reason="security/_bulkseal.c not built")
@pytest.mark.parametrize("digested", [False, True])
def test_compiled_sealer_makes_the_python_paths_bytes(digested: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same key and salt: the compiled rows are byte for byte the Python ones (hash, framing, GCM)."""
    box = SecretBox([Fernet.generate_key().decode()])
    bulk = box.bulk_key()
    monkeypatch.setattr(box, "bulk_key", lambda: bulk)
    items = [hashlib.sha256(v).digest() for v in VALUES] if digested else [v.lower() for v in VALUES]
    fast = set_copy.seal_rows(box, VALUES, items, digested)
    monkeypatch.setattr(set_copy, "compiled", None)
    assert fast == set_copy.seal_rows(box, VALUES, items, digested)
    rows = _copy_rows_read(fast)
    assert [h for h, _ in rows] == [hashlib.sha256(v.lower()).digest()[: set_copy.KEY_BYTES] for v in VALUES]
    assert [box.decrypt(sealed_token(v)) for _, v in rows] == [v.decode() for v in VALUES]


@pytest.mark.skipif(set_copy.compiled is None, reason="security/_bulkseal.c not built")
def test_compiled_sealer_fresh_key_per_call_and_tamper_evident() -> None:
    box = SecretBox([Fernet.generate_key().decode()])
    first = _copy_rows_read(set_copy.seal_rows(box, VALUES, VALUES, False))
    second = _copy_rows_read(set_copy.seal_rows(box, VALUES[:1], VALUES[:1], False))
    assert len({v[1:17] for _, v in first}) == 1 and second[0][1][1:17] != first[0][1][1:17]  # salt per call
    assert len({v[17:21] for _, v in first}) == len(first)  # a distinct nonce per value
    assert all(plain not in v for plain, (_, v) in zip(VALUES[:3], first))  # never the plaintext
    blob = bytearray(first[0][1])
    blob[-1] ^= 1
    with pytest.raises(ValueError):
        box.decrypt(sealed_token(bytes(blob)))


@pytest.mark.skipif(set_copy.compiled is None, reason="security/_bulkseal.c not built")
def test_compiled_sealer_refuses_bad_input() -> None:
    assert set_copy.compiled is not None
    seal = set_copy.compiled.seal_rows
    prefix = b"\x01" + bytes(16)
    with pytest.raises(ValueError):
        seal(bytes(16), prefix, [b"a"], [b"a"], False, 16)  # not an AES-256 key
    with pytest.raises(ValueError):
        seal(bytes(32), prefix, [b"a"] * (MAX_SEAL + 1), [b"a"] * (MAX_SEAL + 1), False, 16)  # nonces would run out
    with pytest.raises(ValueError):
        seal(bytes(32), prefix, [b"a"], [b"short"], True, 16)  # a digest is 32 bytes
    with pytest.raises(ValueError):
        seal(bytes(32), prefix, ["a"], [b"a"], False, 16)  # str, not bytes
    with pytest.raises(ValueError):
        seal(bytes(32), prefix, [b"a", b"b"], [b"a"], False, 16)  # lists of different lengths
    with pytest.raises(ValueError):
        seal(bytes(32), prefix, [b"a"], [b"a"], False, 33)  # longer than a SHA-256 digest
