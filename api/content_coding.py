"""Request bodies sent with `Content-Encoding: gzip` (or `deflate`), decoded under a size cap.

Backends batching events compress them. A compressed body of a few kilobytes can inflate to
gigabytes (a zip bomb), so a body is never decompressed whole and measured afterwards: zlib is asked
for at most one byte more than the cap, and reaching that byte refuses the request. What comes out
goes through the same size, nesting and text checks as an uncompressed body (`api/limits.py`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

SUPPORTED = ("gzip", "deflate")
# Real clients apply one coding. Thousands stacked (`deflate,deflate,...`) made the streaming
# decoder recurse once per stage into a RecursionError (a 500), and cost a decompressor each.
MAX_CODINGS = 4
# gzip members holding nothing: a client concatenating files never sends many, while megabytes of
# `gzip.compress(b"")` decode to nothing and were never counted against any limit but cost CPU.
MAX_EMPTY_MEMBERS = 64
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer
_ZLIB_WBITS = zlib.MAX_WBITS  # RFC 1950, what HTTP's "deflate" means
_RAW_WBITS = -zlib.MAX_WBITS  # bare RFC 1951, what some clients send as "deflate" anyway


class UnsupportedCoding(Exception):
    """A Content-Encoding this server cannot decode (415)."""


class CorruptBody(Exception):
    """The compressed body is not a valid stream of its coding (400)."""


class BodyTooLarge(Exception):
    """The decoded body exceeds the cap (413)."""


def codings(header: bytes | None) -> list[str]:
    """The Content-Encoding header's codings, in the order they were applied (`identity` dropped).

    Raises UnsupportedCoding for any coding other than gzip (`x-gzip`) and deflate."""
    if not header:
        return []
    found: list[str] = []
    for part in header.decode("latin-1").split(","):
        name = part.strip().lower()
        if name in ("", "identity"):
            continue
        name = "gzip" if name == "x-gzip" else name
        if name not in SUPPORTED:
            shown = name if name.isascii() and name.isprintable() and len(name) <= 40 else "(unreadable)"
            raise UnsupportedCoding(
                f"Content-Encoding {shown!r} is not supported; send gzip, deflate or an uncompressed body"
            )
        found.append(name)
        if len(found) > MAX_CODINGS:
            raise UnsupportedCoding(
                f"Content-Encoding lists more than {MAX_CODINGS} codings; send the body compressed once "
                "(gzip or deflate) or uncompressed"
            )
    return found


def decode(body: bytes, applied: list[str], limit: int) -> bytes:
    """`body` with every coding in `applied` undone, last applied first; each stage at most `limit` bytes."""
    for coding in reversed(applied):
        body = _inflate(body, coding, limit)
    return body


def _wbits(body: bytes, coding: str) -> int:
    if coding == "gzip":
        return _GZIP_WBITS
    # A zlib stream starts with a CMF/FLG pair: deflate method (8) and a checksum multiple of 31.
    wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
    return _ZLIB_WBITS if wrapped else _RAW_WBITS


def _inflate(body: bytes, coding: str, limit: int) -> bytes:
    """One coding undone. gzip may hold several members back to back (RFC 1952); each is inflated
    in turn, the cap counting them all."""
    if not body:
        return body
    out = bytearray()
    rest = body
    wbits = _wbits(body, coding)
    empty = 0
    while rest:
        inflater = zlib.decompressobj(wbits)
        try:
            # At most one byte over the cap: reaching it proves the body too large without inflating more.
            before = len(out)
            out += inflater.decompress(rest, limit + 1 - len(out))
            empty += len(out) == before
            if empty > MAX_EMPTY_MEMBERS:
                raise CorruptBody(_TOO_MANY_EMPTY)
        except zlib.error as exc:
            raise CorruptBody(f"not a valid {coding} stream ({_reason(exc)})") from None
        if len(out) > limit:
            raise BodyTooLarge(f"request body over {limit} bytes once decompressed")
        if not inflater.eof:
            raise CorruptBody(f"truncated {coding} stream (it does not end)")
        rest = inflater.unused_data
        if rest and coding != "gzip":
            raise CorruptBody(f"{len(rest)} bytes after the end of the {coding} stream")
    return bytes(out)


_TOO_MANY_EMPTY = f"more than {MAX_EMPTY_MEMBERS} empty gzip members"


class StreamDecoder:
    """The codings in `applied` undone chunk by chunk, for a body streamed on rather than held
    (an upload to the object store, `api/limits.py`). No chunk's output may be inflated whole
    either: zlib yields at most `piece` bytes at a time, so a zip bomb costs the caller's limit
    (it counts what comes out) and no more memory than a piece per stage."""

    def __init__(self, applied: list[str], piece: int = 1 << 20) -> None:
        self._stages = [_Stage(coding, piece) for coding in reversed(applied)]  # last applied first

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded bytes `chunk` yields, in pieces; CorruptBody for an invalid stream."""
        yield from self._through(0, chunk, end=False)

    def finish(self) -> Iterator[bytes]:
        """What the end of the body releases; CorruptBody when a stream does not end there."""
        yield from self._through(0, b"", end=True)

    def _through(self, index: int, data: bytes, *, end: bool) -> Iterator[bytes]:
        # Recursive, one level per stage: `codings` allows at most MAX_CODINGS of them.
        if index == len(self._stages):
            if data:
                yield data
            return
        for piece in self._stages[index].feed(data, end=end):
            yield from self._through(index + 1, piece, end=False)
        if end:
            yield from self._through(index + 1, b"", end=True)


class _Stage:
    """One coding undone as a stream (`_inflate`'s rules: several gzip members; deflate with or
    without its zlib wrapper, told apart by its first two bytes)."""

    def __init__(self, coding: str, piece: int) -> None:
        self.coding = coding
        self.piece = piece
        self.head = b""  # bytes held until the wrapper can be told (deflate: two)
        self.inflater: Any = None
        self.started = False  # some input seen: an empty body is no stream and no error
        self.member_out = 0  # bytes the current member has yielded
        self.empty = 0  # members ended having yielded nothing

    def feed(self, data: bytes, *, end: bool) -> Iterator[bytes]:
        if self.inflater is None:
            self.head += data
            if len(self.head) < 2 and not end:
                return
            data, self.head = self.head, b""
            self.started = bool(data)
            self.inflater = zlib.decompressobj(_wbits(data, self.coding))
        while data:
            if self.inflater.eof:  # a member ended and more follows
                if self.coding != "gzip":
                    raise CorruptBody(f"{len(data)} bytes after the end of the {self.coding} stream")
                self.inflater = zlib.decompressobj(_GZIP_WBITS)
                self.member_out = 0
            try:
                out = self.inflater.decompress(data, self.piece)
            except zlib.error as exc:
                raise CorruptBody(f"not a valid {self.coding} stream ({_reason(exc)})") from None
            data = self.inflater.unconsumed_tail or self.inflater.unused_data
            self.member_out += len(out)
            if self.inflater.eof and not self.member_out:
                self.empty += 1
                if self.empty > MAX_EMPTY_MEMBERS:
                    raise CorruptBody(_TOO_MANY_EMPTY)
            if out:
                yield out
            elif not data:
                break
        if end and self.started and not self.inflater.eof:
            raise CorruptBody(f"truncated {self.coding} stream (it does not end)")


def _reason(exc: zlib.error) -> str:
    """zlib's text without its "Error -3 while decompressing data: " prefix."""
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text
