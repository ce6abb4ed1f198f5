"""Bulk row parsing of subscriber lists: the fast path gives exactly what `row_value` gives line by line."""

from __future__ import annotations

import hashlib
import random

import pytest

from domain import subscribers as rules
from domain.events import email_hash, phone_hash, sha256_hex

LINES = {
    "email": [
        b"a@b.com", b"", b"B@X.Org", b"x\xc3\xa9@y.z\r", b"bad", b" a@b.com ", b'"q@w.e"', b"a,b@c.d", b"\xff",
        b"a@b.com\r\r", b"\xc3\x89@x.io", b"a\x1f@b.com", b"\x1fa@b.com", b"a@b.c\x7f", b"\xc2\xa0a@b.com",
        b"x" * 320 + b"@a.b", b"MiXeD.Case@Example.COM", b"\xce\xa3@x.gr",
    ],
    "phone": [b"15551230001", b"+4915112345678", b"555-1234", b"+0123", b" 4915112345678", b"", b"+15551230001\r"],
    "custom": [b"abc", b"a b", b"x" * 257, b"  y ", b"id-1\r", b"\xc3\xa9" * 200, b"\xc3\xa9" * 257, b""],
}  # fmt: skip


def _line_by_line(id_type: str, lines: list[bytes], budget: int = 1000) -> rules.Parsed:
    """The reference: every line through `row_value` (what the fast path must equal)."""
    out = rules.Parsed(consumed=len(lines))
    for i, raw in enumerate(lines):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            verdict = rules.row_value(id_type, next(__import__("csv").reader([raw.decode()]), []))
        except UnicodeDecodeError:
            verdict = "not valid UTF-8"
        if isinstance(verdict, str):
            out.rejections.append((2 + i, verdict))
        else:
            out.values.append(verdict[0].encode())
            out.hashes.append(bytes.fromhex(verdict[1]))
    return out


@pytest.mark.parametrize("id_type", sorted(LINES))
def test_bulk_parse_equals_line_by_line(id_type: str) -> None:
    """Random slices of tricky lines (padding, quotes, CR, control and non-ASCII characters, too long)."""
    rng = random.Random(7)
    fast_used = 0
    for _ in range(600):
        part = rng.choices(LINES[id_type], k=rng.randint(1, 6))
        got = rules.parse_lines(id_type, part, 2, 1000)
        want = _line_by_line(id_type, part)
        assert (got.consumed, got.values, got.hashes, got.rejections) == (
            want.consumed, want.values, want.hashes, want.rejections,
        ), part  # fmt: skip
        # Left undigested (the COPY path hashes in bulk), the values to hash give the same digests.
        raw = rules.parse_lines(id_type, part, 2, 1000, digest=False)
        digests = raw.hashes if raw.digested else [hashlib.sha256(v).digest() for v in raw.hashes]
        assert (raw.values, digests, raw.rejections) == (want.values, want.hashes, want.rejections), part
        fast_used += rules._fast(id_type, part, True) is not None
    assert fast_used > 50  # the bulk path was exercised, not only the fallback


def test_hashes_match_the_identity_hashes() -> None:
    """Listed values hash like identification events and the opt-in API hash them."""
    assert rules.parse_lines("email", [b"Ann@Example.com"], 2, 0).hashes == [bytes.fromhex(email_hash("ann@example.com"))]
    assert rules.parse_lines("phone", [b"4915112345678"], 2, 0).hashes == [bytes.fromhex(phone_hash("+4915112345678"))]
    assert rules.parse_lines("custom", [b"id-7"], 2, 0).hashes == [bytes.fromhex(sha256_hex("id-7"))]


def test_stops_after_the_rejection_over_budget_with_line_numbers() -> None:
    lines = [b"a@b.com", b"bad1", b"", b"c@d.com", b"bad2", b"bad3", b"e@f.com"]
    got = rules.parse_lines("email", lines, 10, 1)
    assert got.consumed == 5 and [n for n, _ in got.rejections] == [11, 14]
    assert got.values == [b"a@b.com", b"c@d.com"]
