"""PostgreSQL binary COPY framing for subscriber set rows (key, sealed value), without escaping.

`seal_rows` hashes, seals and frames a slice's rows in one call to the compiled sealer
(`security/_bulkseal.c`, ~0.3 us a row) when it is built, else in Python (`copy_rows` over
`SecretBox.seal_parts`, ~1.2 us a row): the same bytes either way (tests compare them). Kept free
of heavy imports (the crypto module only): seal helper processes (`activities/seal_pool.py`) run it.
"""

from __future__ import annotations

from hashlib import sha256
from itertools import chain, repeat
from types import ModuleType

from security.crypto import COUNTER_BYTES, SealedParts, SecretBox

compiled: ModuleType | None
try:
    from security import _bulkseal as compiled
except ImportError:  # not built (no compiler or libssl-dev at install): the Python path below
    compiled = None

# Rows are keyed by the first 16 bytes of the value's SHA-256 (the hash used elsewhere, cut):
# 128 bits keep collisions out of reach (~1e-25 for 10M values) and the rows, the index and its
# build are smaller than with all 32 (-10% COPY, -12% index CPU, measured). Sets written before
# hold 32-byte keys; lookups ask for both (store/subscribers.py: effective_opt_in).
KEY_BYTES = 16
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
TRAILER = b"\xff\xff"
_ROW = b"\x00\x02" + KEY_BYTES.to_bytes(4, "big")  # 2 fields; the first (the key) is always KEY_BYTES long
_LENGTHS = [i.to_bytes(4, "big") for i in range(4096)]  # the second's length: a sealed value is < 1.1 KB


def copy_rows(keys: list[bytes], sealed: SealedParts) -> bytes:
    """Rows (key, sealed value) in binary COPY format, HEADER and TRAILER not included. Each
    value is written as its pieces (no per-value concatenation); map/zip/chain over C callables:
    no Python bytecode per row (this runs 10M times a sync)."""
    n = len(keys)
    lengths = map(_LENGTHS[len(sealed.prefix) + COUNTER_BYTES :].__getitem__, map(len, sealed.bodies))
    pieces = zip(repeat(_ROW, n), keys, lengths, repeat(sealed.prefix, n), sealed.counters, sealed.bodies)
    return b"".join(chain.from_iterable(pieces))


def seal_rows(box: SecretBox, values: list[bytes], items: list[bytes], digested: bool) -> bytes:
    """COPY rows for `values` (at most `crypto.MAX_SEAL`), sealed under a fresh `box.bulk_key()`;
    each row's key is SHA-256 of its item, or the item itself when `digested` (a digest), cut
    to KEY_BYTES."""
    prefix, key = box.bulk_key()
    if compiled is not None:
        framed: bytes = compiled.seal_rows(key, prefix, values, items, digested, KEY_BYTES)
        return framed
    keys = [h[:KEY_BYTES] for h in items] if digested else [sha256(v).digest()[:KEY_BYTES] for v in items]
    return copy_rows(keys, box.seal_parts(values, (prefix, key)))
