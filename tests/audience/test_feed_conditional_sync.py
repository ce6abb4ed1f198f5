"""A URL feed whose file has not changed since the last applied sync is not read again.

A scheduled sync of a URL feed sends the version (strong ETag, else Last-Modified) the feed's last
`succeeded` sync read as If-None-Match / If-Modified-Since; a 304 ends the sync `unchanged` with nothing
staged or applied. Not when the feed's configuration changed since that sync (mode, URL, ...), not from a
sync that failed or was refused, and not when a sync-now asks `?refetch=true`. The feed URL is the local
provider server, answering conditional GETs like a real web server.
"""

from __future__ import annotations

import asyncio
import secrets
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from activities.streams import unless_headers, url_version
from settings import Settings
from store.engine import Store
from store.feed_tables import Feed, FeedSync, ProductChange
from store.tables import Product
from tests.audience.feed_helpers import create_feed, csv_bytes, feed_syncs
from tests.helpers import SectionKeys
from tests.provider_server import ProviderServer, Received, Reply
from workflows.feed_models import FeedSyncInput, FeedSyncSummary
from workflows.feeds import FeedSyncWorkflow

FIRST = csv_bytes("sku,name,price", "sku-a,A,10", "sku-b,B,20", "sku-c,C,30", "sku-d,D,40")
SECOND = csv_bytes("sku,name,price", "sku-a,A,5", "sku-b,B,20", "sku-c,C,30", "sku-d,D,40")
VERSIONS = {
    "etag": ('"v1-first"', '"v2-second"'),
    "last-modified": ("Mon, 06 Jul 2026 10:00:00 GMT", "Mon, 06 Jul 2026 10:05:00 GMT"),
}
CONDITIONAL = ("if-none-match", "if-modified-since")


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


class _WebServer:
    """A feed URL answering 304 to If-None-Match naming its ETag, or to If-Modified-Since not before
    its Last-Modified (RFC 9110), with the version header on every answer."""

    def __init__(self, header: str) -> None:
        self.header = header
        self.body, self.version = FIRST.decode(), VERSIONS[header][0]

    def replace(self, body: bytes) -> None:
        self.body, self.version = body.decode(), VERSIONS[self.header][1]

    def __call__(self, req: Received) -> Reply:
        headers = {self.header: self.version, "content-type": "text/csv"}
        inm, ims = req.headers.get("if-none-match"), req.headers.get("if-modified-since")
        if self.header == "etag" and inm is not None:
            if self.version in [tag.strip() for tag in inm.split(",")]:
                return Reply(304, "", headers)
        elif self.header == "last-modified" and ims is not None:
            if parsedate_to_datetime(self.version) <= parsedate_to_datetime(ims):
                return Reply(304, "", headers)
        return Reply(200, self.body, headers)


async def _url_feed(
    api: httpx.AsyncClient, section: SectionKeys, provider: ProviderServer, header: str = "etag"
) -> tuple[str, str, _WebServer]:
    path = f"/feed-{secrets.token_hex(3)}.csv"
    server = _WebServer(header)
    provider.handler(path, server)
    return await create_feed(api, section, source="url", url=provider.url(path)), path, server


async def _sync_now(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, feed: str, **params: str
) -> FeedSyncSummary:
    r = await api.post(f"/api/v1/feeds/{feed}/sync", params=params, headers=section.mgmt)
    assert r.status_code == 202, r.text
    handle = env.client.get_workflow_handle_for(FeedSyncWorkflow.run, r.json()["workflow_id"])
    return await asyncio.wait_for(handle.result(), 60)


def _product(store: Store, section: SectionKeys, sku: str) -> Product:
    with store.session() as s:
        product = s.exec(select(Product).where(Product.section_id == section.id, Product.sku == sku)).one()
        s.expunge(product)
    return product


def _reprice(store: Store, section: SectionKeys, sku: str, price: float) -> None:
    """Change a product behind the feed's back: a re-applied file would set it back (and record a drop)."""
    with store.session() as s:
        product = s.exec(select(Product).where(Product.section_id == section.id, Product.sku == sku)).one()
        product.price = price
        s.add(product)


def _change_count(store: Store, sync_id: str) -> int:
    with store.session() as s:
        return len(s.exec(select(ProductChange).where(ProductChange.sync_id == sync_id)).all())


def _conditional(req: Received) -> dict[str, Any]:
    return {h: req.headers[h] for h in CONDITIONAL if h in req.headers}


@pytest.mark.parametrize("header", sorted(VERSIONS))
async def test_unchanged_url_feed_file_is_not_read_or_applied_again(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    provider: ProviderServer, header: str,
) -> None:
    """The second sync asks with the first one's ETag (If-None-Match) or Last-Modified (If-Modified-Since),
    gets a 304 and ends `unchanged`: no product touched, no change recorded, no run. The next sync of a
    changed file still refers to the last applied sync (not the unchanged one), gets a 200 and applies."""
    feed, path, server = await _url_feed(api, section, provider, header)
    first = await _sync_now(api, env, section, feed)
    assert first.state == "succeeded", first
    assert _conditional(provider.to(path)[-1]) == {}  # nothing applied before: a plain GET
    _reprice(store, section, "sku-a", 99)
    before = _product(store, section, "sku-a")

    second = await _sync_now(api, env, section, feed)
    assert (second.state, second.changes, second.removed, second.runs) == ("unchanged", 0, 0, []), second
    expected = {"if-none-match" if header == "etag" else "if-modified-since": VERSIONS[header][0]}
    assert _conditional(provider.to(path)[-1]) == expected
    after = _product(store, section, "sku-a")
    assert (after.price, after.updated_at) == (99, before.updated_at)  # the file was not applied again
    assert _change_count(store, second.sync_id) == 0
    status = (await feed_syncs(api, section, feed))[0]
    assert status["id"] == second.sync_id and status["state"] == "unchanged", status
    assert (status["rows_accepted"], status["lines_read"], status["changes"], status["error"]) == (0, 0, 0, None)
    with store.session() as s:
        sync = s.get(FeedSync, second.sync_id)
        assert sync is not None and sync.source_etag == VERSIONS[header][0] and sync.finished_at is not None

    server.replace(SECOND)
    third = await _sync_now(api, env, section, feed)
    assert _conditional(provider.to(path)[-1]) == expected  # the last applied sync's version, still
    assert (third.state, third.changes) == ("succeeded", 1), third
    assert _product(store, section, "sku-a").price == 5
    fourth = await _sync_now(api, env, section, feed)
    assert fourth.state == "unchanged", fourth
    assert list(_conditional(provider.to(path)[-1]).values()) == [VERSIONS[header][1]]


@pytest.mark.parametrize("edit", ["mode", "url"])
async def test_after_the_feed_config_changes_the_file_is_read_whole(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    provider: ProviderServer, edit: str,
) -> None:
    """A feed whose reading changed since the last applied sync (full to delta; another URL serving a
    file with the same ETag) is fetched without a conditional header and applied; the sync after that
    is conditional again."""
    feed, path, server = await _url_feed(api, section, provider)
    assert (await _sync_now(api, env, section, feed)).state == "succeeded"
    if edit == "url":
        path = path.replace(".csv", "-moved.csv")
        provider.handler(path, server)
    with store.session() as s:
        row = s.get(Feed, feed)
        assert row is not None
        if edit == "mode":
            row.mode = "delta"
        else:
            row.url = provider.url(path)
        s.add(row)
    _reprice(store, section, "sku-a", 99)

    again = await _sync_now(api, env, section, feed)
    assert _conditional(provider.to(path)[-1]) == {}
    assert (again.state, again.changes) == ("succeeded", 1), again
    assert _product(store, section, "sku-a").price == 10
    then = await _sync_now(api, env, section, feed)
    assert then.state == "unchanged", then
    assert _conditional(provider.to(path)[-1]) == {"if-none-match": VERSIONS["etag"][0]}


@pytest.mark.parametrize("outcome", ["failed", "refused"])
async def test_a_sync_that_did_not_apply_is_not_the_reference(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings,
    provider: ProviderServer, outcome: str,
) -> None:
    """A sync that read the new file but failed (too many bad rows) or was refused (a full file removing
    too much) applied nothing: the next sync asks with the version last APPLIED, gets the new file (200)
    and reads it whole; the removal safety valve refuses it again."""
    feed, path, server = await _url_feed(api, section, provider)
    assert (await _sync_now(api, env, section, feed)).state == "succeeded"
    if outcome == "failed":
        server.replace(csv_bytes("sku,name,price", "sku-a,A,1", "sku-b,B,20", "sku-c,C,30", "sku-d,D,40",
                                 "sku-x,X,x", "sku-y,Y,y"))  # fmt: skip
        bad = await env.client.execute_workflow(
            FeedSyncWorkflow.run, FeedSyncInput(section_id=section.id, feed_id=feed, max_rejected_rows=1),
            id=f"feed-test/{secrets.token_hex(4)}", task_queue=settings.task_queue,
        )  # fmt: skip
    else:
        server.replace(csv_bytes("sku,name,price", "sku-a,A,1"))  # would remove 3 of 4
        bad = await _sync_now(api, env, section, feed)
    assert bad.state == outcome, bad

    nxt = await _sync_now(api, env, section, feed)
    assert _conditional(provider.to(path)[-1]) == {"if-none-match": VERSIONS["etag"][0]}  # not v2
    assert nxt.state == ("succeeded" if outcome == "failed" else "refused"), nxt
    if outcome == "failed":
        assert nxt.changes == 1  # sku-a 10 -> 1, the bad rows rejected


async def test_refetch_reads_an_unchanged_file_whole(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, provider: ProviderServer
) -> None:
    """`POST /feeds/{id}/sync?refetch=true` sends no conditional header: the file is read and applied
    again (setting back a product changed behind the feed's back). A value that is not a boolean: 422."""
    feed, path, _ = await _url_feed(api, section, provider)
    assert (await _sync_now(api, env, section, feed)).state == "succeeded"
    _reprice(store, section, "sku-a", 99)
    forced = await _sync_now(api, env, section, feed, refetch="true")
    assert _conditional(provider.to(path)[-1]) == {}
    assert (forced.state, forced.changes) == ("succeeded", 1), forced
    assert _product(store, section, "sku-a").price == 10
    r = await api.post(f"/api/v1/feeds/{feed}/sync", params={"refetch": "maybe"}, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "refetch"], r.text


def test_conditional_headers_by_validator() -> None:
    """A quoted ETag goes as If-None-Match, an HTTP date as If-Modified-Since, anything else as nothing."""
    assert unless_headers('"abc"') == {"If-None-Match": '"abc"'}
    assert unless_headers(VERSIONS["last-modified"][0]) == {"If-Modified-Since": VERSIONS["last-modified"][0]}
    assert unless_headers("abc123") == {}


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ({"etag": '"v1"', "last-modified": "Mon, 06 Jul 2026 10:00:00 GMT"}, '"v1"'),  # a strong ETag first
        ({"etag": 'W/"v1"', "date": "Mon, 06 Jul 2026 10:05:00 GMT", "last-modified": "Mon, 06 Jul 2026 10:00:00 GMT"},
         "Mon, 06 Jul 2026 10:00:00 GMT"),  # fmt: skip
        # Weak dates (RFC 9110, 8.8.2.2), no version: rewritten within a minute of the answer, in the
        # future (a wrong clock), a zone-less date, or no date at all.
        ({"date": "Mon, 06 Jul 2026 10:00:30 GMT", "last-modified": "Mon, 06 Jul 2026 10:00:00 GMT"}, None),
        ({"date": "Mon, 06 Jul 2026 10:00:00 GMT", "last-modified": "Wed, 05 Aug 2026 10:00:00 GMT"}, None),
        ({"last-modified": "Wed, 06 Jan 2100 10:00:00 GMT"}, None),
        ({"date": "Mon, 06 Jul 2026 10:05:00 GMT", "last-modified": "Mon, 06 Jul 2026 10:00:00 -0000"}, None),
        ({"etag": 'W/"v1"'}, None),
    ],
)
def test_a_file_is_versioned_only_by_a_strong_validator(headers: dict[str, str], version: str | None) -> None:
    """A Last-Modified later than a minute before the answer's Date would answer 304 to the next
    sync after the file changed within that minute (or ever, in the future): the change skipped."""
    assert url_version(httpx.Headers(headers)) == version
