"""A compressed feed upload (`PUT /feeds/{id}/file`, streamed and decoded on the fly by
`api/limits.py`) is limited by what is received as well as by what it decodes to, and decoding runs
off the event loop. A re-probe trial's findings: 30 MB of empty gzip members (which decode to
nothing) were accepted under a 5 MB upload limit, taking 15 s of decoding on the API's event loop
(/healthz waited seconds); and `Content-Encoding: deflate` stacked 1500 times was a 500
(RecursionError in the streaming decoder)."""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import pytest

from api import content_coding
from api.limits import RequestLimits
from tests.audience.feed_helpers import create_feed
from tests.helpers import SectionKeys

MIB = 1024 * 1024
CSV = b"sku,name,price\nW-1,wire,1\n"


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _through_limits(
    chunks: list[bytes], encoding: str | None, *, limit: int = MIB
) -> tuple[int, bytes, bytes]:
    """`chunks` through the middleware as a chunked upload (no Content-Length): (status, error body,
    what the route received)."""
    received = bytearray()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            received.extend(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = RequestLimits(app, max_body_bytes=MIB, max_json_depth=32, rate_per_second=0, burst=1,
                           max_upload_bytes=limit)  # fmt: skip
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-encoding", encoding.encode())] if encoding else []
    scope = {"type": "http", "method": "PUT", "path": "/api/v1/feeds/fd_1/file", "headers": headers}
    await limits(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body, bytes(received)


async def test_received_bytes_over_the_upload_limit_are_a_413_though_they_decode_to_less() -> None:
    # Incompressible: gzip's stored blocks make it a little longer than it decodes to.
    content = os.urandom(MIB - 200)
    packed = gzip.compress(content, 9)
    assert len(packed) > MIB
    chunks = [packed[at : at + 64 * 1024] for at in range(0, len(packed), 64 * 1024)]
    status, body, _ = await _through_limits(chunks, "gzip")
    assert status == 413 and f"upload over {MIB} bytes".encode() in body, body
    status, _, received = await _through_limits([gzip.compress(content[: MIB // 2])], "gzip")
    assert status == 202 and received == content[: MIB // 2]


async def test_many_empty_gzip_members_are_refused() -> None:
    empty = gzip.compress(b"")
    status, body, _ = await _through_limits([gzip.compress(CSV), empty * 5000], "gzip", limit=64 * MIB)
    assert status == 400 and b"empty gzip members" in body, body
    # A few members (files concatenated, some empty) are a valid gzip file.
    status, _, received = await _through_limits([gzip.compress(CSV), empty * 3, gzip.compress(CSV)], "gzip")
    assert status == 202 and received == CSV * 2
    with pytest.raises(content_coding.CorruptBody, match="empty gzip members"):
        content_coding.decode(empty * 5000, ["gzip"], MIB)


async def test_a_compressed_upload_is_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    class Recording(content_coding.StreamDecoder):
        def feed(self, chunk: bytes) -> Iterator[bytes]:
            threads.append(threading.get_ident())
            yield from super().feed(chunk)

    monkeypatch.setattr(content_coding, "StreamDecoder", Recording)
    status, _, received = await _through_limits([gzip.compress(CSV)], "gzip")
    assert status == 202 and received == CSV
    assert threads and threading.get_ident() not in threads


def _stacked(times: int) -> tuple[bytes, str]:
    body = CSV
    for _ in range(times):
        body = zlib.compress(body, 1)
    return body, ",".join(["deflate"] * times)


async def test_stacked_codings_are_a_415_naming_content_encoding(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    feed = await create_feed(api, section)
    body, header = _stacked(1500)
    r = await api.put(f"/api/v1/feeds/{feed}/file", content=body,
                      headers={**section.mgmt, "Content-Encoding": header})  # fmt: skip
    assert r.status_code == 415 and "Content-Encoding" in r.json()["error"], r.text
    body, header = _stacked(5)  # the JSON path shares the cap
    r = await api.post("/api/v1/feeds", content=body,
                       headers={**section.mgmt, "Content-Encoding": header, "content-type": "application/json"})  # fmt: skip
    assert r.status_code == 415 and "more than 4 codings" in r.json()["error"], r.text

    async def once() -> AsyncIterator[bytes]:
        yield _stacked(2)[0]

    r = await api.put(f"/api/v1/feeds/{feed}/file", content=once(),
                      headers={**section.mgmt, "Content-Encoding": "deflate, deflate"})  # fmt: skip
    assert r.status_code == 202, r.text
