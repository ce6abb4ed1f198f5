"""Request limits in front of every route: body size, JSON nesting, per-key rate.

A pure ASGI middleware (no body re-parsing by FastAPI needed): it buffers at most
`max_body_bytes` of the request, answering 413 beyond that (declared Content-Length or a
chunked body that keeps going); decodes a `Content-Encoding: gzip`/`deflate` body under the same
cap (`api/content_coding.py`: 413 beyond it, 400 for a corrupt stream, 415 for another coding),
so every later check sees the decoded body; answers 400 for JSON nested deeper than
`max_json_depth` (deep nesting makes parsers and validators recurse) and for a JSON body that is
not UTF-8, and 429 with Retry-After when the caller has spent its token bucket. An upload the
route streams to the object store (`STREAMED_UPLOADS`) is the exception: passed on as it arrives,
decoded on the fly, and limited by `max_upload_bytes` instead. Buckets are per
process; behind N API processes the effective limit is N times the configured one.

Who the caller is (`_Caller`): a key gets a bucket of its own only once it has been verified (it
is in `api.auth`'s cache, or was verified earlier in this process and not revoked since); any other
request, with no key or with a key not (yet) verified, spends its client address's bucket. A bucket
per presented credential let a flood of made-up keys each start with a full burst (and each cost a
key lookup in the database): they were never throttled. A key's first request spends its client
address's token and, once verified, one of its own. The admin key is verified by comparing it with
the setting (never cached): it has a bucket of its own from its first request, so an operator's
script is not throttled with whatever else its host sends, nor the reverse. A revoked key falls
back to its address's bucket: its requests are unverified keys' again.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import content_coding
from api.auth import is_admin_key, is_verified, key_digest, was_revoked
from api.errors import error_body, errors_body

MAX_BUCKETS = 100_000  # bounded memory: least recently used keys are forgotten


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`rate` tokens per second up to `burst`, per key; thread-safe, LRU-bounded."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, key: str) -> bool:
        with self._lock:
            return key in self._buckets

    def take(self, key: str, now: float | None = None) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = _Bucket(float(self.burst), now)
                self._buckets[key] = b
                if len(self._buckets) > MAX_BUCKETS:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                b.tokens = min(float(self.burst), b.tokens + (now - b.updated) * self.rate)
                b.updated = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / self.rate


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit` (strings are skipped, escapes honoured)."""
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def unstorable_text_path(body: bytes) -> list[str | int] | None:
    """Where the first JSON string (or key) holding NUL or a lone surrogate sits; only reachable
    through \\u escapes.

    PostgreSQL text cannot hold NUL and no UTF-8 database can hold a lone surrogate: such input
    would fail at the INSERT as a 500, so it is refused up front, at the field that holds it.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None  # malformed JSON: FastAPI's parse error, answered 400 by api/errors.py

    def bad(value: str) -> bool:
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    for value, path in _walk(doc):
        if isinstance(value, str) and bad(value):
            return path
        if isinstance(value, dict):
            for k in value:
                if bad(k):
                    return [*path, k.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")]
    return None


def _walk(doc: Any) -> Iterator[tuple[Any, list[str | int]]]:
    """Every value of a JSON document with its path, depth-first in document order. Without
    recursion: a body without a content type skipped the depth limit."""
    stack: list[tuple[Any, list[str | int]]] = [(doc, [])]
    while stack:
        value, path = stack.pop()
        yield value, path
        if isinstance(value, dict):
            stack.extend((v, [*path, k]) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, [*path, i]) for i, v in reversed(list(enumerate(value))))


# Python's json reads a number as non-finite only from a NaN or Infinity literal or when it is too
# large for a float: an exponent of two or more digits (after a digit), or 300 digits in a row (a
# one-digit exponent adds at most 9; also what an integer beyond the float range needs). With
# digits read as "0" and E as "e" these are plain substring searches (a regular expression costs
# as much as the parse it would save); most bodies match none and skip the second parse. Text can
# match too (a hex hash holding "5e12"): that only costs the parse.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789E", b"0000000000e")


def _may_hold_non_finite(body: bytes) -> bool:
    if b"NaN" in body or b"Infinity" in body:
        return True
    shape = body.translate(_DIGITS_AS_ZERO)
    return b"0e00" in shape or b"0e+00" in shape or b"0" * 300 in shape


def non_finite_path(body: bytes) -> list[str | int] | None:
    """Where the first number no float can hold sits (`non_finite_paths`), None when none does."""
    paths = non_finite_paths(body)
    return paths[0] if paths else None


def non_finite_paths(body: bytes) -> list[list[str | int]]:
    """Where every number no float can hold sits (`["events", 0, "properties", "value"]`), in
    document order: a batch with several is told of them all at once.

    Python's json reads `NaN`, `Infinity` and `1e400` (as infinity) without complaint; stored, such
    a value is null in one place, `inf` in another and a 500 wherever it is rendered as JSON (a
    report, forever). An integer beyond the float range is refused too: no float field takes it,
    and audience conditions compare numbers as floats.
    """
    if not _may_hold_non_finite(body):
        return []
    try:
        doc = json.loads(body)
    except json.JSONDecodeError:  # not JSON: FastAPI's parse error, answered 400 by api/errors.py
        return []
    except RecursionError:  # absurdly deep (no content type)
        return []
    except ValueError:  # an integer of more than 4300 digits: Python refuses to read it at all
        return [[]]  # where is unknown: the body
    found: list[list[str | int]] = []
    for value, path in _walk(doc):
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
            found.append(path)
    return found


NOT_FINITE = "Input should be a finite number"  # pydantic's type and message for a non-finite float field
# Routes that check their body whole (`domain/event_batch.py`): the middleware leaves them the
# non-finite numbers it found, in the scope under NON_FINITE_KEY, to list with the body's other faults.
MERGES_NON_FINITE = frozenset({"/v2/collect/user/event"})
NON_FINITE_KEY = "rejoin.non_finite"


def non_finite_faults(paths: list[list[str | int]]) -> list[dict[str, Any]]:
    """The faults (as pydantic reports them, `loc` from the body's root) of numbers at `paths`."""
    return [{"type": "finite_number", "loc": path, "msg": NOT_FINITE} for path in paths]


def deferred_non_finite(scope: Scope) -> list[dict[str, Any]]:
    """The faults of the non-finite numbers the middleware left to the route (MERGES_NON_FINITE)."""
    return non_finite_faults(scope.get(NON_FINITE_KEY) or [])


# Recipients' clicks and pixels are always answered (a flood is simply not recorded, see
# api/routes/tracking.py::record); the health check is for load balancers.
EXEMPT_PREFIXES = ("/t/", "/s/", "/tremclk", "/tremop", "/healthz")


def _exempt(path: str) -> bool:
    return path.startswith(EXEMPT_PREFIXES)


# Uploads the route streams to the object store (`PUT /api/v1/feeds/{id}/file`: spooled to disk,
# then put; docs/audience.md): never buffered here, and limited by `max_upload_bytes`, not by the
# body limit (a catalog CSV is often megabytes). Only such routes: every other body is read whole.
STREAMED_UPLOADS = (("PUT", re.compile(r"^/api/v1/feeds/[^/]+/file$")),)


def streams_upload(scope: Scope) -> bool:
    method, path = scope.get("method"), scope.get("path", "")
    return any(method == m and pattern.match(path) for m, pattern in STREAMED_UPLOADS)


class UploadRefused(Exception):
    """A streamed upload refused mid-stream (over the upload limit, a corrupt compressed stream):
    raised out of the route's `receive`, answered by the middleware."""

    def __init__(self, status: int, message: str, *, kind: str = "request_limit", field: str | None = None) -> None:
        super().__init__(message)
        self.answer = _error(status, message, kind=kind, field=field)


@dataclass(frozen=True)
class _Caller:
    """The request's key as `api.auth` reads it (None without one), its `api.auth.key_digest`, its
    bucket name (the digest: raw keys are never kept), the client address's bucket name, and whether
    the key is the admin key."""

    key: str | None
    digest: str
    key_bucket: str
    client_bucket: str
    admin: bool


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key `api/deps.py` checks first: `dy-api-key`, `X-Rejoin-Key`, else a Bearer token."""
    raw = headers.get(b"dy-api-key") or headers.get(b"x-rejoin-key")
    if not raw:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        raw = token.strip() if scheme.lower() == b"bearer" else b""
    # Header values are latin-1 to Starlette too, so this is the string the auth cache holds.
    return raw.decode("latin-1") if raw else None


def _caller(scope: Scope, admin_key: Callable[[], str]) -> _Caller:
    key = _presented_key(dict(scope.get("headers") or []))
    digest = key_digest(key) if key else ""
    client = scope.get("client")
    admin = key is not None and _is_admin(key, admin_key())
    return _Caller(key, digest, "k:" + digest, "ip:" + (client[0] if client else "unknown"), admin)


def _is_admin(key: str, admin_key: str) -> bool:
    return bool(admin_key) and is_admin_key(key, admin_key)


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, *, kind: str = "request_limit",
    field: str | None = None,
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:  # fmt: skip
    body = json.dumps(error_body(message, field, kind=kind)).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, body, hdrs


UNSTORABLE_TEXT = "text may not contain NUL characters or unpaired surrogates"


def _not_utf8(body: bytes) -> str | None:
    """What is wrong when `body` is not UTF-8 (JSON must be, RFC 8259), else None."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
    return None


def _field_error(loc: list[str | int], message: str, kind: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """422 naming the field at `loc`, in the shape FastAPI gives its own validation errors."""
    content = error_body(message, ".".join(str(p) for p in loc), kind=kind)
    content["detail"][0]["loc"] = loc  # list indexes stay numbers and a key with a dot stays one part, as in FastAPI's
    body = json.dumps(content).encode()
    return 422, body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


def _non_finite_error(paths: list[list[str | int]]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """422 listing every non-finite number (capped), in the shape (and with the type and message)
    pydantic gives a non-finite float field."""
    faults = non_finite_faults([["body", *path] for path in paths])
    body = json.dumps(errors_body(faults)).encode()
    return 422, body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


class RequestLimits:
    """ASGI middleware enforcing body size, JSON depth and rate limits (per verified key, else per client)."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int, rate_per_second: float, burst: int,
        admin_key: Callable[[], str] = lambda: "", max_upload_bytes: int | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.admin_key = admin_key  # read when a key is presented (a generated one is made on first use)
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_body_bytes if max_upload_bytes is None else max_upload_bytes
        self.max_json_depth = max_json_depth
        # Verified keys and client addresses apart: made-up keys never reach the keys' buckets, so
        # they cannot push a real key's bucket out of the LRU either.
        self.keys = TokenBuckets(rate_per_second, burst) if rate_per_second > 0 else None
        self.clients = TokenBuckets(rate_per_second, burst) if rate_per_second > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.keys is None or self.clients is None or _exempt(scope.get("path", "")):
            await self._limited(scope, receive, send)
            return
        caller = _caller(scope, self.admin_key)
        own = self._own_bucket(caller)
        wait = self.keys.take(caller.key_bucket) if own else self.clients.take(caller.client_bucket)
        if wait > 0:
            whose = "key" if own else "client (requests without a verified key)"
            await _respond(send, *_error(429, f"rate limit exceeded for this {whose}",
                                         {"retry-after": str(max(1, math.ceil(wait)))}))  # fmt: skip
            return
        await self._limited(scope, receive, send)
        if not own and caller.key is not None and is_verified(caller.key):
            self.keys.take(caller.key_bucket)  # verified by this request: its first token, spent

    def _own_bucket(self, caller: _Caller) -> bool:
        """Whether the request spends its key's own bucket: the admin key's, or a key's verified in
        this process. A dictionary look-up or two, no database: a key verified once keeps its bucket
        after the auth cache's entry expires (its next request re-verifies it), so it never falls back
        to a client address a flood of made-up keys may have drained; until it is revoked."""
        if caller.key is None or self.keys is None:
            return False
        if caller.admin or is_verified(caller.key):
            return True
        return self.keys.known(caller.key_bucket) and not was_revoked(caller.digest)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request through body size, JSON depth and text checks, then the app."""
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers") or []
        headers = dict(raw_headers)
        # Repeated lines are one comma-joined list (RFC 9110 5.3): the dict kept only the last, so
        # `gzip` twice undid one layer (the rest stored as the file) and passed the codings' cap.
        coding_lines = [value for name, value in raw_headers if name == b"content-encoding"]
        try:
            applied = content_coding.codings(b", ".join(coding_lines) if coding_lines else None)
        except content_coding.UnsupportedCoding as exc:
            accepted = {"accept-encoding": ", ".join(content_coding.SUPPORTED)}  # RFC 7694
            await _drain_and_respond(receive, send, *_error(415, str(exc), accepted, kind="content_encoding"))
            return
        if streams_upload(scope):
            await self._streamed(scope, receive, send, headers, applied)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _drain_and_respond(receive, send, *_error(413, f"request body over {self.max_body_bytes} bytes"))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _drain_and_respond(receive, send, *_error(413, f"request body over {self.max_body_bytes} bytes"))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if applied:
            decoded = await _decoded(scope, body, applied, self.max_body_bytes, send)
            if decoded is None:
                return
            scope, body = decoded
        content_type = headers.get(b"content-type", b"")
        if b"json" in content_type:
            if json_depth_exceeds(body, self.max_json_depth):
                await _respond(send, *_error(400, f"JSON nested deeper than {self.max_json_depth} levels"))
                return
            bad_text = unstorable_text_path(body) if b"\\u" in body else None
            if bad_text is not None:
                await _respond(send, *_field_error(["body", *bad_text], UNSTORABLE_TEXT, "string_unstorable"))
                return
        # FastAPI also parses a body without a content type as JSON: it gets the same checks.
        if b"json" in content_type or not content_type:
            not_utf8 = _not_utf8(body)
            if not_utf8 is not None:  # else FastAPI's 400 "error parsing the body", saying nothing more
                await _respond(send, *_error(400, not_utf8, kind="json_invalid", field="body"))
                return
            paths = non_finite_paths(body)
            # Left to the route only when FastAPI will read the body as JSON (a JSON content type).
            if paths and scope.get("path") in MERGES_NON_FINITE and [] not in paths and b"json" in content_type:
                scope = {**scope, NON_FINITE_KEY: paths}
            elif paths:
                await _respond(send, *_non_finite_error(paths))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


    async def _streamed(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], applied: list[str]
    ) -> None:
        """An upload passed on as it arrives (decoded on the fly when compressed), never held whole:
        413 once it goes past `max_upload_bytes` (declared, or counted as it streams), 400 for a
        corrupt compressed stream. A compressed upload counts what is received as well as what it
        decodes to, each against the limit, and is decoded in a thread. No JSON checks: an upload is a
        file, not a JSON body."""
        limit = self.max_upload_bytes
        too_large = f"upload over {limit} bytes"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _drain_and_respond(receive, send, *_error(413, too_large))
            return
        decoder = content_coding.StreamDecoder(applied) if applied else None
        if decoder is not None:  # the route sees the decoded file, of a length unknown yet
            kept = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-encoding", b"content-length")]
            scope = {**scope, "headers": kept}
        pieces: Iterator[bytes] | None = None  # the decoded pieces of the chunk received last
        size = 0  # decoded bytes passed on
        wire = 0  # bytes received: a compressed upload counts both (empty gzip members decode to nothing)
        ended = False
        last_sent = False  # the message with more_body false has been given

        def decoded(chunk: bytes, more: bool) -> Iterator[bytes]:
            if decoder is None:
                yield chunk
                return
            try:
                yield from decoder.feed(chunk)
                if not more:
                    yield from decoder.finish()
            except content_coding.CorruptBody as exc:
                raise UploadRefused(400, str(exc), kind="content_encoding", field="body") from None

        async def streamed() -> Message:
            # One piece per call, inflated only when asked for: a compressed chunk that decodes to
            # far more is never held whole. The end is an empty last message.
            nonlocal pieces, size, wire, ended, last_sent
            while True:
                while pieces is not None:
                    # Inflating is CPU work (a chunk of many gzip members yields nothing for long):
                    # done in a thread, never on the event loop every other request waits on.
                    piece = await asyncio.to_thread(next, pieces, None) if decoder is not None else next(pieces, None)
                    if piece is None:
                        break
                    size += len(piece)
                    if size > limit:
                        raise UploadRefused(413, too_large)
                    if piece:
                        return {"type": "http.request", "body": piece, "more_body": True}
                pieces = None
                if ended:
                    if last_sent:
                        return await receive()  # after the end: only a disconnect can come
                    last_sent = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                message = await receive()
                if message["type"] != "http.request":
                    return message  # a disconnect: the route's stream ends there
                ended = not message.get("more_body", False)
                chunk = message.get("body", b"")
                wire += len(chunk)
                if wire > limit:
                    raise UploadRefused(413, too_large)
                pieces = decoded(chunk, not ended)

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, streamed, tracked)
        except UploadRefused as exc:
            if started:
                raise
            await _drain_and_respond(receive, send, *exc.answer)


async def _decoded(
    scope: Scope, body: bytes, applied: list[str], limit: int, send: Send
) -> tuple[Scope, bytes] | None:
    """The scope and body the app sees: the compressed body decoded (at most `limit` bytes) and its
    Content-Encoding dropped; None once an error has been answered."""
    try:
        body = content_coding.decode(body, applied, limit)
    except content_coding.CorruptBody as exc:
        await _respond(send, *_error(400, str(exc), kind="content_encoding", field="body"))
        return None
    except content_coding.BodyTooLarge as exc:
        await _respond(send, *_error(413, str(exc)))
        return None
    kept = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-encoding", b"content-length")]
    return {**scope, "headers": [*kept, (b"content-length", str(len(body)).encode())]}, body


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drain_and_respond(receive: Receive, send: Send, status: int, body: bytes, headers: Any) -> None:
    # Answer without reading the rest: servers close the connection after an unread body.
    await _respond(send, status, body, [*headers, (b"connection", b"close")])
