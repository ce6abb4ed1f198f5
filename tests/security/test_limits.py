"""Request limits: body size 413, JSON nesting 400, overlong fields and batches 422, page caps, 429."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.limits import TokenBuckets, json_depth_exceeds
from api.main import create_app
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys, make_section, new_dyid


def _event_body(**props: object) -> dict[str, object]:
    return {"user": {"dyid": new_dyid(), "active_consent_accepted": True},
            "events": [{"name": "Custom", "properties": props}]}  # fmt: skip


async def test_oversized_body_is_413(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """A body over the 1 MiB limit is refused with 413 before any parsing, declared or chunked."""
    big = _event_body(blob="x" * (1024 * 1024 + 10))
    r = await api.post("/v2/collect/user/event", json=big, headers=section.ing)
    assert r.status_code == 413, r.text

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit counts streamed bytes
        for _ in range(20):
            yield b" " * 65536
        yield json.dumps(_event_body()).encode()

    r = await api.post("/v2/collect/user/event", content=chunks(),
                       headers={**section.ing, "content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413, r.text
    ok = await api.post("/v2/collect/user/event", json=_event_body(blob="x" * 500_000), headers=section.ing)
    assert ok.status_code == 202, ok.text


async def test_absurd_json_nesting_is_400(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """JSON nested 10,000 deep is 400 (no recursion in parsers or validators); 20 levels are fine."""
    deep = '{"user": {"dyid": "1"}, "events": [{"name": "x", "properties": {"a": ' + "[" * 10_000 + "]" * 10_000 + "}}]}"
    r = await api.post("/v2/collect/user/event", content=deep,
                       headers={**section.ing, "content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    nested: object = 1
    for _ in range(20):
        nested = {"a": nested}
    r = await api.post("/v2/collect/user/event", json=_event_body(n=nested), headers=section.ing)
    assert r.status_code == 202, r.text


def test_depth_scanner_ignores_brackets_inside_strings() -> None:
    """Brackets inside JSON strings (and escaped quotes) do not count as nesting."""
    assert not json_depth_exceeds(json.dumps({"s": "[[[[[[[[[[" * 10, "t": '\\"[[[['}).encode(), 3)
    assert json_depth_exceeds(b'{"a":[[[[1]]]]}', 3)


async def test_overlong_fields_and_batches_are_422_naming_the_field(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """An over-long event name, a batch over 100 events and an over-long section name are 422 with the field."""
    body = _event_body()
    body["events"] = [{"name": "n" * 201, "properties": {}}]
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    assert r.status_code == 422 and "events" in r.text and "name" in r.text, r.text
    body["events"] = [{"name": "ok", "properties": {}}] * 101
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    assert r.status_code == 422 and "events" in r.text, r.text
    r = await api.post("/api/v1/sections", json={"name": "s" * 201}, headers={"Authorization": "Bearer test-admin-key"})
    assert r.status_code == 422 and "name" in r.text, r.text


async def test_page_sizes_are_capped(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Asking for 5,000 outbox rows is 422 on `limit` (max 1,000); 1,000 is allowed."""
    r = await api.get("/api/v1/outbox", params={"limit": 5000}, headers=section.mgmt)
    assert r.status_code == 422 and "limit" in r.text, r.text
    assert (await api.get("/api/v1/outbox", params={"limit": 1000}, headers=section.mgmt)).status_code == 200


@pytest.fixture
async def limited_api(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a tight rate limit: burst 5, then one request per 2 s per key (slow enough that a
    loaded machine cannot refill a token while the test's burst is still going)."""
    app = create_app(settings.model_copy(update={"rate_limit_per_second": 0.5, "rate_limit_burst": 5}),
                     store=store, temporal=env.client)  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as c:
        yield c


async def test_rate_limit_per_key_answers_429_with_retry_after(limited_api: httpx.AsyncClient) -> None:
    """The 6th request in a burst gets 429 + Retry-After; another key is unaffected; the bucket refills."""
    a = await make_section(limited_api, "a")  # one admin-key request
    statuses = [(await limited_api.get("/api/v1/section", headers=a.mgmt)).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429], statuses
    r = await limited_api.get("/api/v1/section", headers=a.mgmt)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    other_key = {"Authorization": f"Bearer {a.ingestion}"}
    assert (await limited_api.get("/api/v1/section", headers=other_key)).status_code == 403  # own bucket, not 429
    buckets = TokenBuckets(rate=5.0, burst=5)
    assert [buckets.take("k", now=0.0) for _ in range(5)] == [0.0] * 5
    assert buckets.take("k", now=0.0) == pytest.approx(0.2)
    assert buckets.take("k", now=0.25) == 0.0  # refilled at 5 tokens/s


async def test_nul_and_lone_surrogates_are_422_not_500(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Text PostgreSQL cannot store (NUL, unpaired surrogates) is refused with 422 instead of failing the INSERT."""
    for bad in ('"cu\\u0000id"', '"\\ud854x"'):
        raw = '{"user": {"dyid": "1", "cuid": ' + bad + '}, "events": [{"name": "x", "properties": {}}]}'
        r = await api.post("/v2/collect/user/event", content=raw,
                           headers={**section.ing, "content-type": "application/json"})  # fmt: skip
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "user", "cuid"], r.text
    ok = '{"user": {"dyid": "1", "cuid": "caf\\u00e9 \\ud83d\\ude00"}, "events": [{"name": "x", "properties": {}}]}'
    r = await api.post("/v2/collect/user/event", content=ok, headers={**section.ing, "content-type": "application/json"})
    assert r.status_code == 202, r.text


async def test_unreadable_bodies_name_where(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Bodies Python's JSON reader refuses outright and bad text deep in a list name the place, not
    FastAPI's bare 400 "error parsing the body": a body not UTF-8 is no JSON at all, a 400 (the
    Experience API's request parse error; it was a 422) saying at which byte; an integer of 5000
    digits and bad text are 422s at their place."""
    headers = {**section.ing, "content-type": "application/json"}
    url = "/v2/collect/user/event"
    latin1 = '{"user": {"dyid": "1"}, "events": [{"name": "Caf\xe9", "properties": {}}]}'.encode("latin-1")
    r = await api.post(url, content=latin1, headers=headers)
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (400, ["body"]), r.text
    assert r.json()["detail"][0]["msg"] == "not valid JSON: not UTF-8 (invalid continuation byte at byte 48)", r.text
    huge = '{"user": {"dyid": "1"}, "events": [{"name": "x", "properties": {"n": ' + "9" * 5000 + "}}]}"
    r = await api.post(url, content=huge, headers=headers)
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body"]), r.text
    nul = '{"user": {"dyid": "1"}, "events": [{"name": "ok", "properties": {}}, {"name": "x\\u0000", "properties": {}}]}'
    r = await api.post(url, content=nul, headers=headers)
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body", "events", 1, "name"]), r.text
    key = '{"user": {"dyid": "1"}, "events": [{"name": "x", "properties": {"a\\ud800": 1}}]}'
    r = await api.post(url, content=key, headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:4] == ["body", "events", 0, "properties"], r.text
