"""Request bodies sent with `Content-Encoding: gzip` or `deflate` (backends batching events send
them; they were read as the compressed bytes: a 400/422 the sender could make nothing of).

Decoded by the limits middleware (api/content_coding.py) under the body size cap, as a stream with
a maximum output, so a zip bomb costs at most the cap: 413 beyond it, 400 for a corrupt stream, 415
for another coding; the nesting and text checks see the decoded body.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from temporalio.testing import WorkflowEnvironment

from api import content_coding
from api.main import create_app
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys, new_dyid

EVENT = "/v2/collect/user/event"
LIMIT = 1024 * 1024  # Settings.max_body_bytes


def _body(**props: Any) -> bytes:
    return json.dumps({"user": {"dyid": new_dyid(), "active_consent_accepted": True},
                       "events": [{"name": "Batch", "properties": props}]}).encode()  # fmt: skip


def _headers(sec: SectionKeys, coding: str) -> dict[str, str]:
    return {**sec.ing, "content-type": "application/json", "content-encoding": coding}


def _bomb(megabytes: int) -> bytes:
    """`megabytes` MiB of zeros, gzipped (about 1 KiB per MiB), made without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(packer.compress(bytes(1 << 20)) for _ in range(megabytes)) + packer.flush()


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


async def test_gzip_and_deflate_bodies_are_accepted(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """gzip (also as `x-gzip`, any case, several members), deflate (zlib-wrapped, as HTTP means it,
    and bare, as some clients send it) and `identity`: 202, the event stored as sent."""
    sent = {
        "gzip": gzip.compress(_body(n=1)),
        "X-GZIP": gzip.compress(_body(n=2)),
        "deflate": zlib.compress(_body(n=3)),
        "Deflate": _raw_deflate(_body(n=4)),
        "identity": _body(n=5),
        "gzip, identity": gzip.compress(_body(n=6)),
        "deflate, gzip": gzip.compress(zlib.compress(_body(n=7))),  # applied in order, undone last first
    }
    body = _body(n=8)
    sent["gzip "] = gzip.compress(body[:20]) + gzip.compress(body[20:])  # two members, one body (RFC 1952)
    for coding, payload in sent.items():
        r = await api.post(EVENT, content=payload, headers=_headers(section, coding))
        assert r.status_code == 202, (coding, r.text)
        assert r.json()["accepted"] == 1
    products = gzip.compress(json.dumps([{"sku": "gz-1", "name": "Zipped", "price": 3}]).encode())
    r = await api.put("/api/v1/products", content=products, headers={**_headers(section, "gzip"), **section.mgmt})
    assert r.status_code == 200, r.text  # management routes too


async def test_repeated_content_encoding_lines_are_one_list(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Two `Content-Encoding: gzip` lines mean `gzip, gzip` (RFC 9110): only the last line was read,
    so one layer was undone and the rest parsed as JSON (a 400), and five lines passed the cap of 4."""
    twice = gzip.compress(gzip.compress(_body(n=9)))
    lines = [*section.ing.items(), ("content-type", "application/json")]
    r = await api.post(EVENT, content=twice, headers=[*lines, ("content-encoding", "gzip"), ("content-encoding", "gzip")])
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    r = await api.post(EVENT, content=twice, headers=[*lines, *[("content-encoding", "gzip")] * 5])
    assert r.status_code == 415 and "more than 4 codings" in r.text, r.text


async def test_a_zip_bomb_is_413_after_at_most_the_cap(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """100 MiB of zeros in 100 KiB of gzip: 413 once the decoded body passes 1 MiB; a body just
    under the cap decoded is accepted, one just over is refused."""
    bomb = _bomb(100)
    assert len(bomb) < LIMIT
    r = await api.post(EVENT, content=bomb, headers=_headers(section, "gzip"))
    assert r.status_code == 413 and r.json()["error"] == f"request body over {LIMIT} bytes once decompressed", r.text
    fits = _body(blob="x" * (LIMIT - 200))
    assert len(fits) <= LIMIT
    r = await api.post(EVENT, content=gzip.compress(fits), headers=_headers(section, "gzip"))
    assert r.status_code == 202, r.text
    r = await api.post(EVENT, content=gzip.compress(_body(blob="x" * LIMIT)), headers=_headers(section, "deflate"))
    assert r.status_code == 400, r.text  # gzip bytes declared as deflate: corrupt
    r = await api.post(EVENT, content=zlib.compress(_body(blob="x" * LIMIT)), headers=_headers(section, "deflate"))
    assert r.status_code == 413, r.text


def test_decoding_a_bomb_never_holds_more_than_the_cap() -> None:
    """Memory while refusing 200 MiB of zeros stays near the 1 MiB cap (streamed inflation with a
    maximum output), where inflating first and measuring after would hold all 200 MiB."""
    bomb = _bomb(200)
    tracemalloc.start()
    try:
        with pytest.raises(content_coding.BodyTooLarge):
            content_coding.decode(bomb, ["gzip"], LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * LIMIT, peak


async def test_corrupt_truncated_or_unknown_codings_are_refused(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Not gzip, cut short, garbage after the stream: 400 naming the body; `br`: 415 with Accept-Encoding."""
    packed = gzip.compress(_body())
    for coding, payload, says in (
        ("gzip", _body(), "not a valid gzip stream (incorrect header check)"),
        ("gzip", packed[:-12], "truncated gzip stream (it does not end)"),
        ("gzip", packed[:10] + bytes(len(packed) - 10), "not a valid gzip stream"),
        ("gzip", packed + b"junk", "not a valid gzip stream (incorrect header check)"),
        ("deflate", zlib.compress(_body()) + b"junk", "4 bytes after the end of the deflate stream"),
    ):
        r = await api.post(EVENT, content=payload, headers=_headers(section, coding))
        assert r.status_code == 400, (says, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body"] and detail["msg"].startswith(says), (says, r.text)
    r = await api.post(EVENT, content=packed, headers=_headers(section, "br"))
    assert r.status_code == 415 and r.headers["accept-encoding"] == "gzip, deflate", r.text
    assert r.json()["error"] == "Content-Encoding 'br' is not supported; send gzip, deflate or an uncompressed body"
    r = await api.post(EVENT, content=packed, headers=_headers(section, "gzip, compress"))
    assert r.status_code == 415, r.text


async def test_limits_apply_to_the_decoded_body(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Nesting, NUL text, non-finite numbers and malformed JSON inside a gzip body: the same answers
    as sent plain (400, 422 at the field, 422 at the field, 400)."""
    nested = b"[" * 1000 + b"]" * 1000
    deep = b'{"user": {"dyid": "1"}, "events": [{"name": "x", "properties": {"a": ' + nested + b"}}]}"
    r = await api.post(EVENT, content=gzip.compress(deep), headers=_headers(section, "gzip"))
    assert r.status_code == 400 and "nested deeper" in r.text, r.text
    nul = b'{"user": {"dyid": "1", "cuid": "a\\u0000b"}, "events": [{"name": "x", "properties": {}}]}'
    r = await api.post(EVENT, content=gzip.compress(nul), headers=_headers(section, "gzip"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "user", "cuid"], r.text
    huge = b'{"user": {"dyid": "1"}, "events": [{"name": "x", "properties": {"value": 1e400}}]}'
    r = await api.post(EVENT, content=zlib.compress(huge), headers=_headers(section, "deflate"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "value", r.text
    r = await api.post(EVENT, content=gzip.compress(b'{"user": '), headers=_headers(section, "gzip"))
    assert r.status_code == 400 and r.json()["detail"][0]["type"] == "json_invalid", r.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(env: WorkflowEnvironment, settings: Settings, store: Store) -> Iterator[str]:
    """The app behind a real uvicorn on loopback (its own thread and loop; no lifespan: the sweeper
    is not this test's)."""
    app = create_app(settings, store=store, temporal=env.client)
    # No logging set-up of uvicorn's (config, levels): later tests capture its access logger's INFO.
    config = uvicorn.Config(app, host="127.0.0.1", port=_free_port(), lifespan="off", log_level=None,
                            log_config=None, access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.02)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(10)


async def test_over_real_http_chunked_and_declared(served: str, section: SectionKeys) -> None:
    """Through uvicorn: a gzip body with its Content-Length, the same streamed in chunks, and a bomb."""
    packed = gzip.compress(_body(via="http"))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(packed), 7):
            yield packed[start : start + 7]
            await asyncio.sleep(0)

    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        r = await client.post(EVENT, content=packed, headers=_headers(section, "gzip"))
        assert r.status_code == 202, r.text
        r = await client.post(EVENT, content=chunks(), headers=_headers(section, "gzip"))
        assert r.status_code == 202, r.text
        r = await client.post(EVENT, content=_bomb(50), headers=_headers(section, "gzip"))
        assert r.status_code == 413, r.text
