"""Subscriber-list file rules: folder names, the header per identifier type, one row's value.

Pure functions, shared by the sync activity and its tests. The value is hashed exactly as
identification events and the opt-in API hash it, so a listed email reaches the user whose
Login carried that email's hash.

`parse_lines` applies `row_value` to many lines at once. Files are mostly clean, so it first
checks a whole slice with one regex pass (C speed) and hashes it in bulk; a slice holding
anything else (a bad row, CSV quoting, padding, bytes that are not UTF-8) goes line by line
through `row_value`, so results are the same either way.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field

from domain import email_address
from domain.hashing import email_hash, phone_hash, sha256_hex
from domain.identifiers import normalize_phone
from domain.text import storable, unstorable_reason

FOLDER = re.compile(r"^upload_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}$")
FILE_NAME = "data.csv"
HEADERS = {"email": "email", "phone": "phone numbers", "custom": "id"}
EMAIL = email_address.EMAIL  # one rule for every plain email (domain/email_address.py)


def expected_header(identifier_type: str) -> str:
    return HEADERS.get(identifier_type, "id")


def header_error(identifier_type: str, cells: list[str]) -> str | None:
    """Why the header row is wrong (the whole file is then rejected), or None."""
    want = expected_header(identifier_type)
    got = [c.strip().lower() for c in cells]
    if got != [want]:
        shown = storable(",".join(cells))[:80]  # kept as the sync's error: a NUL shown as U+FFFD
        return f"header must be exactly '{want}' for {identifier_type} integrations (got '{shown}')"
    return None


def row_value(identifier_type: str, cells: list[str]) -> tuple[str, str] | str:
    """(value, hash) of an accepted row, or the reason it is rejected."""
    if len(cells) != 1:
        return f"expected 1 column, got {len(cells)}"
    # A NUL or lone surrogate: no database text can hold it and no identifier the API takes has one.
    unstorable = unstorable_reason(expected_header(identifier_type), cells[0])
    if unstorable:
        return unstorable
    value = cells[0].strip()
    if not value:
        return "empty value"
    if identifier_type == "email":
        if not email_address.is_email(value):
            return "not a valid email address"
        return value, email_hash(value)
    if identifier_type == "phone":
        # List rows are E.164 digits with the "+" optional (seeds: "country code ... digits only"), so
        # bare digits are taken as international; anything else follows the API's rule (separators
        # allowed after a "+"). The "+" form is stored, hashed and sent, as for an API opt-in.
        try:
            e164 = normalize_phone("+" + value if value.isascii() and value.isdigit() else value)
        except ValueError:
            return "not an E.164 phone number (country code first, 8 to 15 digits; separators only after a +)"
        return e164, phone_hash(e164)
    if len(value) > 256:
        return "identifier longer than 256 characters"
    return value, sha256_hex(value)


# A line that `row_value` accepts as it is (a phone only gains its "+"): no CSV quoting or comma, no
# padding, no NUL/CR.
_PLAIN = email_address.PART
_LINE = {"email": rf"{_PLAIN}@{_PLAIN}\.{_PLAIN}", "phone": r"\+?[1-9][0-9]{7,14}", "custom": r'[^\s,"\x00]+'}
# Whole slices at once: lines joined by "\n", each blank or plain; possessive, so a slice that
# does not match fails at once instead of backtracking through earlier lines.
FAST_SLICE = {k: re.compile(rf"(?:{v})?+(?:\n(?:{v})?+)*+") for k, v in _LINE.items()}
# The same on ASCII bytes; control characters excluded too (str's \s also counts \x1c-\x1f).
_PLAIN_ASCII = email_address.PART_ASCII
_LINE_ASCII = {
    "email": _PLAIN_ASCII + b"@" + _PLAIN_ASCII + rb"\." + _PLAIN_ASCII,
    "phone": rb"\+?[1-9][0-9]{7,14}",
    "custom": rb'[^\x00-\x20,"\x7f]+',
}
FAST_ASCII = {k: re.compile(rb"(?:" + v + rb")?+(?:\n(?:" + v + rb")?+)*+") for k, v in _LINE_ASCII.items()}
MAX_LEN = {"email": 320, "phone": 16, "custom": 256}


@dataclass
class Parsed:
    """What `parse_lines` made of lines[:consumed]: accepted values (UTF-8) with their hashes
    (SHA-256 digests, the bytes of `row_value`'s hex), rejections. When not `digested`, `hashes`
    holds what to hash instead (the normalised values), for a caller that hashes in bulk."""

    consumed: int = 0
    values: list[bytes] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    rejections: list[tuple[int, str]] = field(default_factory=list)
    digested: bool = True


def parse_lines(identifier_type: str, lines: list[bytes], first_line: int, budget: int, digest: bool = True) -> Parsed:
    """Rows of `lines` (numbered from `first_line`, "\n" removed); stops after the rejection
    that exceeds `budget`, so a file failing for too many bad rows reports exactly the first ones.
    `digest=False`: the bulk path may leave hashing to the caller (see `Parsed`)."""
    fast = _fast(identifier_type, lines, digest)
    if fast is not None:
        return fast
    out = Parsed()
    for i, raw in enumerate(lines):
        out.consumed = i + 1
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            # strict: an unclosed quote is a bad row, not a value (the lenient reader drops the quote)
            verdict = row_value(identifier_type, next(csv.reader([raw.decode("utf-8")], strict=True), []))
        except UnicodeDecodeError:
            verdict = "not valid UTF-8"
        except csv.Error as exc:
            verdict = f"malformed CSV: {exc}"[:200]
        if isinstance(verdict, str):
            out.rejections.append((first_line + i, verdict))
            if len(out.rejections) > budget:
                break
        else:
            out.values.append(verdict[0].encode())
            out.hashes.append(bytes.fromhex(verdict[1]))
    return out


def _fast(identifier_type: str, lines: list[bytes], digest: bool) -> Parsed | None:
    """The bulk path: every line blank or plainly valid, else None (then line by line)."""
    if identifier_type not in FAST_SLICE or not lines:
        return None
    data = b"\n".join(lines)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").removesuffix(b"\r")
        if b"\r" in data:
            return None
        lines = data.split(b"\n")
    if data.isascii():  # the usual file: checked and hashed as bytes, nothing decoded per row
        if FAST_ASCII[identifier_type].fullmatch(data) is None:
            return None
        values = [v for v in lines if v] if b"" in lines else lines
        folded = data.lower().split(b"\n") if identifier_type == "email" else values
        if len(folded) != len(values):
            folded = [v for v in folded if v]
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if FAST_SLICE[identifier_type].fullmatch(text) is None:
            return None
        words = [v for v in text.split("\n") if v]
        values = [v.encode() for v in words]
        folded = [v.lower().encode() for v in words] if identifier_type == "email" else values
    if not values:
        return Parsed(consumed=len(lines))
    if max(map(len, values)) > MAX_LEN[identifier_type] and any(
        len(v.decode()) > MAX_LEN[identifier_type] for v in values
    ):
        return None
    if identifier_type == "phone":  # stored and sent in E.164 with its "+", as `row_value` gives it
        values = folded = [b"+" + v.removeprefix(b"+") for v in values]
    if not digest:
        return Parsed(consumed=len(lines), values=values, hashes=folded, digested=False)
    sha = hashlib.sha256
    return Parsed(consumed=len(lines), values=values, hashes=[sha(v).digest() for v in folded])
