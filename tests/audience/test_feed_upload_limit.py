"""A feed file upload (`PUT /feeds/{id}/file`) is streamed to the object store, so it has a limit
of its own (`REJOIN_MAX_UPLOAD_BYTES`, 1 GiB by default) instead of the 1 MiB body limit: a 2.7 MB
catalog CSV was a 413 "request body over 1048576 bytes" (a security trial's finding), while
docs/audience.md says the upload is streamed "whatever the file size". The middleware passes the
upload on as it arrives (never buffered); every other body keeps the 1 MiB limit."""

from __future__ import annotations

import gzip
import secrets
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.limits import RequestLimits
from settings import Settings
from store import objects
from store.engine import Store
from tests.audience.feed_helpers import create_feed, get_product, upload_feed
from tests.helpers import SectionKeys, api_with

HEADER = "sku,name,price,in_stock"
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _big_csv(rows: int, prefix: str) -> bytes:
    lines = [HEADER] + [f"{prefix}-{i},{'Long name ' * 90}{i},10,true" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def _stored(settings: Settings, section_id: str, feed_id: str) -> list[bytes]:
    store = objects.uploads(settings)
    out = []
    for key in store.keys(objects.upload_prefix(section_id, feed_id)):
        with store.chunks(key, 0) as chunks:
            out.append(b"".join(chunks))
    return out


async def test_an_upload_over_the_body_limit_is_streamed_stored_and_synced(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings
) -> None:
    assert settings.max_body_bytes == MIB and settings.max_upload_bytes == 1024 * MIB
    prefix = "big-" + secrets.token_hex(3)
    content = _big_csv(3000, prefix)
    assert len(content) > 2.5 * MIB
    feed = await create_feed(api, section)
    summary = await upload_feed(api, env.client, section, feed, content)
    assert summary.state == "succeeded", summary
    assert (await get_product(api, section, f"{prefix}-2999"))["sku"] == f"{prefix}-2999"
    assert _stored(settings, section.id, feed) == [content]


async def test_a_compressed_upload_is_decoded_as_it_streams(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings
) -> None:
    content = _big_csv(2000, "gz-" + secrets.token_hex(3))
    assert len(content) > MIB
    feed = await create_feed(api, section)
    headers = {**section.mgmt, "Content-Encoding": "gzip"}
    r = await api.put(f"/api/v1/feeds/{feed}/file", content=gzip.compress(content), headers=headers)
    assert r.status_code == 202, r.text
    assert _stored(settings, section.id, feed) == [content]
    # Its sync ended first: an upload while the feed's sync runs is a 409 before the body is read.
    await env.client.get_workflow_handle(r.json()["workflow_id"], run_id=r.json()["run_id"]).result()
    r = await api.put(f"/api/v1/feeds/{feed}/file", content=gzip.compress(content)[:5000], headers=headers)
    assert r.status_code == 400 and "truncated gzip" in r.text, r.text


async def test_uploads_over_the_upload_limit_are_413s_and_other_bodies_keep_the_body_limit(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings
) -> None:
    small = Settings(**{**settings.model_dump(), "max_upload_bytes": 2 * MIB,
                        "secret_key": ",".join(settings.secret_keys)})  # fmt: skip
    content = _big_csv(3000, "over")  # > 2 MiB
    feed = await create_feed(api, section)
    async with api_with(small, store, env) as limited:
        r = await limited.put(f"/api/v1/feeds/{feed}/file", content=content, headers=section.mgmt)
        assert r.status_code == 413 and f"upload over {2 * MIB} bytes" in r.text, r.text

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for at in range(0, len(content), 64 * 1024):
                yield content[at : at + 64 * 1024]

        r = await limited.put(f"/api/v1/feeds/{feed}/file", content=chunked(), headers=section.mgmt)
        assert r.status_code == 413 and "upload over" in r.text, r.text
        bomb = gzip.compress(b"0" * (3 * MIB))  # small compressed, over the limit decoded
        r = await limited.put(f"/api/v1/feeds/{feed}/file", content=bomb,
                              headers={**section.mgmt, "Content-Encoding": "gzip"})  # fmt: skip
        assert r.status_code == 413, r.text
    assert _stored(settings, section.id, feed) == []  # nothing of the refused uploads was kept

    big_json = [{"sku": f"p{i}", "name": "x" * 900} for i in range(1000)]  # ~0.9 MiB under 1000 items
    big_json += [{"sku": "q", "name": "y" * 200_000}]
    r = await api.put("/api/v1/products", json=big_json, headers=section.mgmt)
    assert r.status_code == 413 and f"request body over {MIB} bytes" in r.text, r.text
    r = await api.post(
        "/api/v1/feeds", content=b" " * (MIB + 1), headers={**section.mgmt, "content-type": "application/json"}
    )
    assert r.status_code == 413, r.text


async def test_the_middleware_passes_an_upload_on_in_chunks_never_whole() -> None:
    """What reaches the route is each chunk as it came, not the body joined in memory."""
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            seen.append(len(message.get("body", b"")))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = RequestLimits(app, max_body_bytes=MIB, max_json_depth=32, rate_per_second=0, burst=1,
                           max_upload_bytes=64 * MIB)  # fmt: skip
    chunks = [b"x" * MIB] * 5
    messages = [{"type": "http.request", "body": c, "more_body": i < 4} for i, c in enumerate(chunks)]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "PUT", "path": "/api/v1/feeds/fd_1/file", "headers": []}
    await limits(scope, receive, send)
    assert sent[0]["status"] == 202 and [n for n in seen if n] == [MIB] * 5 and seen[-1] == 0
