"""Subscriber-list file rules: folder names, the header per identifier type, one row's value.

Pure functions, shared by the sync activity and its tests. The value is hashed exactly as
identification events and the opt-in API hash it, so a listed email reaches the user whose
Login carried that email's hash.
"""

from __future__ import annotations

import re

from domain.events import email_hash, phone_hash, sha256_hex

FOLDER = re.compile(r"^upload_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}$")
FILE_NAME = "data.csv"
HEADERS = {"email": "email", "phone": "phone numbers", "custom": "id"}
EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
E164_DIGITS = re.compile(r"^\+?[1-9]\d{6,14}$")


def expected_header(identifier_type: str) -> str:
    return HEADERS.get(identifier_type, "id")


def header_error(identifier_type: str, cells: list[str]) -> str | None:
    """Why the header row is wrong (the whole file is then rejected), or None."""
    want = expected_header(identifier_type)
    got = [c.strip().lower() for c in cells]
    if got != [want]:
        shown = ",".join(cells)[:80]
        return f"header must be exactly '{want}' for a {identifier_type} integration (got '{shown}')"
    return None


def row_value(identifier_type: str, cells: list[str]) -> tuple[str, str] | str:
    """(value, hash) of an accepted row, or the reason it is rejected."""
    if len(cells) != 1:
        return f"expected 1 column, got {len(cells)}"
    value = cells[0].strip()
    if not value:
        return "empty value"
    if identifier_type == "email":
        if len(value) > 320 or not EMAIL.match(value):
            return "not a valid email address"
        return value, email_hash(value)
    if identifier_type == "phone":
        if not E164_DIGITS.match(value):
            return "not an E.164 phone number (country code and digits only)"
        return value, phone_hash(value)
    if len(value) > 256:
        return "identifier longer than 256 characters"
    return value, sha256_hex(value)
