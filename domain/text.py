"""Text every store can keep: PostgreSQL's text and JSONB refuse NUL, and no UTF-8 encoder takes a
lone surrogate. The API refuses both in JSON bodies (`api/limits.py`); files read by the worker (feeds,
subscriber lists) reject the row holding one with `unstorable_reason`, and text quoting a file's
content is made `storable` before it is kept."""

from __future__ import annotations

import re

# What a character no store can keep becomes: the Unicode replacement character.
REPLACEMENT = "\ufffd"
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD (the same string when it has none)."""
    if text.isascii():
        return text.replace("\0", REPLACEMENT) if "\0" in text else text
    return UNSTORABLE.sub(REPLACEMENT, text)


def clipped(text: str | None, limit: int) -> str | None:
    """`text` cut to `limit` characters (a column's length), ending in "…" when it was longer.

    Reasons are free text from outside Rejoin too (an operator's exit signal from the Temporal CLI):
    one longer than its column failed every write on PostgreSQL, and a store write retried for ever
    left the journey running with no pending activity in the UI."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def unstorable_reason(name: str, value: str) -> str | None:
    """Why `value` (of the column `name`) cannot be kept, or None. Names the column, never quotes the value."""
    if value.isascii() and "\0" not in value:
        return None
    found = UNSTORABLE.search(value)
    if found is None:
        return None
    what = "a NUL" if found.group() == "\0" else "a lone surrogate"
    return f"{storable(name.strip())[:60]} holds {what}, an unstorable character"
