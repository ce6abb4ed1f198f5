"""Streaming CSV input for sync activities: byte chunks from S3 or HTTP, split into lines.

Files are read in chunks and never held whole; every line comes with the byte offset after
it, which a sync heartbeats so a retried attempt resumes with a ranged read.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import httpx
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from temporalio.exceptions import ApplicationError

from providers.base import ConfigurationError
from providers.http import MAX_REDIRECTS, REDIRECTS
from providers.url_guard import Target, UrlGuard

CHUNK = 1 << 16
BIG_CHUNK = 1 << 20  # bulk readers (subscriber lists): fewer, larger reads
MAX_LINE = 1 << 20  # a longer "line" is not a CSV row; refuse it instead of buffering the file
# Seconds a feed URL gets to accept the connection, to answer, and between two reads of its body: a
# server that hangs fails the attempt saying so (`url_unanswered`), retried as FILE_RETRY says
# (workflows/feeds.py). A module constant so tests can shorten it; docs/audience.md, Feeds.
URL_TIMEOUT = 30.0


class LineTooLong(ValueError):
    pass


class MixedLineEnds(ValueError):
    """A file whose lines end with CR alone also holds an LF: where its rows end is ambiguous."""


class SourceMissing(LookupError):
    """The S3 object (or its bucket) does not exist: retrying the read cannot bring it."""


# What S3 answers a HEAD of a missing key or bucket (a HEAD has no body: often just the status).
MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def s3_head(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """The object's HEAD (size, ETag). A missing object or bucket raises `SourceMissing` naming both, so
    the sync fails at once saying so; anything else (403, 5xx, a lost connection) is raised as it is and
    the attempt may be retried."""
    try:
        return dict(s3.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING:
            raise SourceMissing(f"s3://{bucket}/{key} not found") from exc
        raise


def lines_from(chunks: Iterator[bytes], start: int) -> Iterator[tuple[bytes, int]]:
    """Split a byte stream into lines; yields (line without its ending, offset after it)."""
    pending = b""
    offset = start
    for chunk in chunks:
        pending += chunk
        while True:
            cut = pending.find(b"\n")
            if cut < 0:
                break
            line, pending = pending[:cut], pending[cut + 1 :]
            offset += cut + 1
            yield line.rstrip(b"\r"), offset
    if pending:
        offset += len(pending)
        yield pending.rstrip(b"\r"), offset


def line_blocks(chunks: Iterator[bytes], start: int) -> Iterator[tuple[list[bytes], int]]:
    """Split a byte stream into blocks of whole lines (each without its "\n", "\r" kept), one
    block per chunk read, with the byte offset after the block's last line.

    Lines may also end with CR alone (classic Mac exports): told apart by a first chunk holding a
    CR before more data but no LF at all, then split at CRs. Either way each line ends with one
    byte, so callers count offsets the same; a later LF in such a file fails it (`MixedLineEnds`)."""
    pending = b""
    offset = start
    end = b""  # the line ending once known: b"\n" (LF or CRLF) or b"\r" (CR only)
    for chunk in chunks:
        data = pending + chunk if pending else chunk
        if not end:
            end = _line_end(data)
        elif end == b"\r" and b"\n" in chunk:
            raise MixedLineEnds(f"lines end with CR only, then with LF after byte {offset}: use LF or CRLF")
        cut = data.rfind(end) if end else -1
        if cut < 0:
            if len(data) > MAX_LINE:
                raise LineTooLong(f"a line longer than {MAX_LINE} bytes after byte {offset}")
            pending = data
            continue
        pending = data[cut + 1 :]
        offset += cut + 1
        yield data[:cut].split(end), offset
    if pending:
        yield [pending], offset + len(pending)


def _line_end(data: bytes) -> bytes:
    """How the lines in `data` (a file's first bytes, or from a resume offset) end; b"" while unknown
    (no LF yet, and no CR but maybe the last byte, which the next chunk's LF may make a CRLF)."""
    if b"\n" in data:
        return b"\n"
    return b"\r" if -1 < data.find(b"\r") < len(data) - 1 else b""


def cells(line: bytes) -> list[str]:
    """One CSV line as cells; raises UnicodeDecodeError for bytes that are not UTF-8.

    Rows are one line each (quoted values may hold commas, not line breaks).
    """
    return next(csv.reader([line.decode("utf-8")]), [])


@contextmanager
def s3_chunks(
    s3: Any, bucket: str, key: str, offset: int, chunk: int = CHUNK, if_match: str | None = None
) -> Iterator[Iterator[bytes]]:
    """`if_match`: the ETag the read must be of (S3 answers 412 PreconditionFailed if the object was
    replaced: `source_changed`), so a ranged resume never splices another file's tail onto the rows
    already read."""
    extra: dict[str, Any] = {"Range": f"bytes={offset}-"} if offset else {}
    if if_match is not None:
        extra["IfMatch"] = if_match
    try:
        body = s3.get_object(Bucket=bucket, Key=key, **extra)["Body"]
    except ClientError as exc:
        if if_match is None or exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
            raise
        raise source_changed(f"s3://{bucket}/{key}") from None
    try:
        yield body.iter_chunks(chunk)
    finally:
        body.close()


def source_changed(what: str) -> ApplicationError:
    """The file was replaced since the sync pinned its version (retryable): the retry pins the new
    version and reads it from its start."""
    return ApplicationError(f"{what} was replaced during the sync; retrying from its start", type="SourceChanged")


@dataclass
class UrlRead:
    """A GET of a file by URL: its bytes from `start`, and the version (validator) of what was sent."""

    chunks: Iterator[bytes]
    start: int  # the offset asked for, or 0 when the server sent the whole file because it changed
    version: str | None  # strong ETag, else Last-Modified; None when the server names no version
    unchanged: bool = False  # a 304 to `unless`: no bytes, the caller's version is the file's


def url_version(headers: httpx.Headers) -> str | None:
    """The validator to pin a URL's file by: a strong ETag, else a strong Last-Modified, else None (the
    file has no version: it is read whole each time). A weak ETag (W/) never matches If-Range.

    A Last-Modified is strong only at least 60 s before the answer's Date (RFC 9110, 8.8.2.2): a file
    rewritten within the second it was read, or stamped in the future by a wrong clock, would
    otherwise answer 304 to the next sync's If-Modified-Since after it changed, and the change was
    skipped (a trial's feed kept an old price: `unchanged` while the file said otherwise)."""
    etag: str | None = headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    last_modified: str | None = headers.get("last-modified")
    if not last_modified:
        return None
    try:
        modified = parsedate_to_datetime(last_modified)
        answered = parsedate_to_datetime(headers["date"]) if headers.get("date") else datetime.now(UTC)
    except (TypeError, ValueError, IndexError):
        return None
    if modified.tzinfo is None or answered.tzinfo is None:  # "-0000": a date with no known zone
        return None
    return last_modified if modified <= answered - timedelta(seconds=60) else None


def unless_headers(version: str) -> dict[str, str]:
    """The conditional headers asking for a file only if it is not `version` (a `url_version`): a quoted
    ETag as If-None-Match, an HTTP date (Last-Modified) as If-Modified-Since; anything else (an unquoted
    ETag from a server breaking the syntax) none, so the file is read whole."""
    if version.startswith('"'):
        return {"If-None-Match": version}
    try:
        parsedate_to_datetime(version)
    except (TypeError, ValueError, IndexError):
        return {}
    return {"If-Modified-Since": version}


@contextmanager
def url_chunks(
    url: str,
    offset: int,
    if_range: str | None = None,
    timeout: float | None = None,
    *,
    guard: UrlGuard,
    unless: str | None = None,
) -> Iterator[UrlRead]:
    """GET `url` streaming from `offset` (a server ignoring Range is skipped through).

    `if_range`: the version the bytes before `offset` were read from. A server that honours it sends
    the rest only if the file is unchanged (206), else the whole new file (200): then `start` is 0
    and nothing is skipped, as when a 200 names another version than `if_range`. A 206 of another
    version (If-Range ignored) is left to the caller, who compares `version`.

    The URL is a customer's: every hop is checked by `guard` and the connection goes to the address
    it checked (`_pinned_get`). `ConfigurationError` (`RefusedAddress` for an internal target) when a
    hop may not be fetched.

    `unless`: the version the caller already applied, for a read from the start (offset 0): the GET is
    conditional (`unless_headers`) and a 304 yields `unchanged` with no bytes.

    `timeout` (default `URL_TIMEOUT`): a server that does not connect, answer or send on within it, or
    that cannot be reached at all, fails the read with a retryable `ApplicationError` naming the URL
    (`url_unanswered`), not httpx's bare "timed out"."""
    wait = URL_TIMEOUT if timeout is None else timeout
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    if offset and if_range is not None:
        headers["If-Range"] = if_range
    conditional = unless_headers(unless) if unless is not None and not offset else {}
    headers.update(conditional)
    with httpx.Client(timeout=wait, follow_redirects=False) as http:
        try:
            r = _pinned_get(http, guard, url, headers)
        except httpx.TransportError as exc:
            raise url_unanswered(url, wait, exc) from None
        try:
            if conditional and r.status_code == 304:
                yield UrlRead(iter(()), 0, unless, unchanged=True)
                return
            if not r.is_success:
                # Named by the URL as given: the request's own URL holds the pinned address instead.
                why = f"{r.status_code} {r.reason_phrase} for {url}"
                raise httpx.HTTPStatusError(why, request=r.request, response=r)
            version = url_version(r.headers)
            whole = bool(offset) and r.status_code != 206
            changed = whole and if_range is not None and version != if_range
            skip = offset if whole and not changed else 0

            def chunks() -> Iterator[bytes]:
                nonlocal skip
                try:
                    for chunk in r.iter_bytes(CHUNK):
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                        if chunk:
                            yield chunk
                except httpx.TransportError as exc:
                    raise url_unanswered(url, wait, exc, r.num_bytes_downloaded) from None

            yield UrlRead(chunks(), 0 if changed else offset, version)
        finally:
            r.close()


def url_unanswered(
    url: str, timeout: float, exc: httpx.TransportError, received: int | None = None
) -> ApplicationError:
    """Why a GET of a feed URL got no (further) answer, naming the URL as given, as an error answer's
    reason does ("404 Not Found for <url>"): a timeout says which wait ran out and how long it was.
    Retryable (`SourceUnanswered`): the server may be back by the next attempt. Raised `from None`
    (so is `source_changed`): the message carries httpx's reason, and the chain's stack traces pushed
    the failure Temporal keeps for a retried activity over its size limit (about 4 KB), which then
    shows "Failure exceeds size limit." instead of the reason."""
    during = "" if received is None else f" after {received} bytes"
    if isinstance(exc, httpx.ConnectTimeout):
        why = f"{url} did not accept a connection within {timeout:g} s"
    elif isinstance(exc, httpx.TimeoutException) and received is None:
        why = f"{url} did not answer within {timeout:g} s"
    elif isinstance(exc, httpx.TimeoutException):
        why = f"{url} stopped sending for {timeout:g} s{during}"
    else:
        detail = str(exc) or type(exc).__name__
        why = f"{url} could not be read{during}: {detail}"
    return ApplicationError(why, type="SourceUnanswered")


def _pinned_get(http: httpx.Client, guard: UrlGuard, url: str, headers: dict[str, str]) -> httpx.Response:
    """The (streamed) answer to a GET of `url`, each hop checked and sent to the address checked, the
    host name in Host and TLS SNI (verified against it), as provider calls are (`providers/http.py`):
    a name that resolves elsewhere after the check (DNS rebinding) cannot move the request. Redirects
    are followed, each target checked and pinned in turn (no credential travels with a feed's GET),
    at most `MAX_REDIRECTS`."""
    for _ in range(MAX_REDIRECTS + 1):
        target = _checked(guard, url)
        extensions: dict[str, Any] = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = http.build_request(
            "GET", target.pinned_url, headers={**headers, "Host": target.host_header}, extensions=extensions
        )
        r = http.send(request, stream=True)
        location = r.headers.get("location")
        if r.status_code not in REDIRECTS or not location:
            return r
        r.close()
        url = urljoin(url, location)
    raise ConfigurationError(f"the feed URL redirected more than {MAX_REDIRECTS} times")


def _checked(guard: UrlGuard, url: str) -> Target:
    """`guard.resolve(url)` from sync code, whether or not this thread runs an event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, guard.resolve(url)).result()
