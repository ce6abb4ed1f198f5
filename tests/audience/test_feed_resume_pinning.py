"""A feed file replaced while its sync was interrupted: the resume must not splice the two files.

A feed sync stages rows batch by batch and heartbeats the byte offset; a retried attempt resumes
with a ranged read. When the S3 object or the URL's file was replaced in between, reading the new
file at the old offset would stage the old file's first rows plus a tail of the new one that begins
mid-row. The sync pins the file's version (S3 ETag with If-Match; a URL's ETag or Last-Modified
with If-Range) and starts over when it changed. S3 is moto on loopback (the `s3` fixture).
"""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.feeds import FeedActivities
from settings import Settings
from store import objects
from store.engine import Store
from store.feed_tables import FeedRejection, FeedStage, FeedSync
from tests.audience.feed_helpers import FEED_BUCKET, create_feed, csv_bytes, feed_bucket
from tests.audience.test_subscriber_list_fixes import _ReplacedAfterHead  # the same race, on a feed's file
from tests.helpers import SectionKeys
from tests.provider_server import ProviderServer, Received, Reply
from workflows.feed_models import FeedBeginRequest, FeedStageRequest, FeedStageResult

# The first file has a bad row (line 4) so its rejection must be forgotten too; the second file's
# rows are longer, so the old offset falls in the middle of one of them.
A_FILE = csv_bytes("sku,price,name", "a0,1,A", "a1,2,A", "a2,x,A", "a3,4,A", "a4,5,A", "a5,6,A", "a6,7,A")
B_ROWS = [f"bravo-{i},{i}0.5,Bravo product number {i}" for i in range(6)]
B_FILE = csv_bytes("sku,price,name", *B_ROWS[:3], "bravo-bad,nope,B", *B_ROWS[3:])
B_SKUS = [f"bravo-{i}" for i in range(6)]


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _begin(store: Store, settings: Settings, feed: str) -> tuple[FeedActivities, FeedStageRequest]:
    acts = FeedActivities(store, settings)
    sync_id = "fsync_" + secrets.token_hex(6)
    ActivityEnvironment().run(acts.begin, FeedBeginRequest(sync_id=sync_id, feed_id=feed, as_of=datetime.now(UTC)))
    return acts, FeedStageRequest(sync_id=sync_id, feed_id=feed, max_rejected_rows=10, batch_size=2)


def _crash_after_committed_batches(acts: FeedActivities, req: FeedStageRequest) -> dict[str, Any]:
    """The first attempt dies (as by kill -9) at its second heartbeat, two batches committed; returns
    the heartbeat Temporal hands the retry."""
    beats: list[dict[str, Any]] = []

    def die(*details: Any) -> None:
        beats.append(dict(details[0]))
        if len(beats) == 2:
            raise RuntimeError("worker lost")

    env = ActivityEnvironment()
    env.on_heartbeat = die
    with pytest.raises(RuntimeError):
        env.run(acts.stage, req)
    assert beats[-1]["offset"] > 0 and beats[-1]["rejected"] == 1
    return beats[-1]


def _resume(acts: FeedActivities, req: FeedStageRequest, beat: dict[str, Any]) -> FeedStageResult:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_details=[beat])
    result: FeedStageResult = env.run(acts.stage, req)
    return result


def _assert_only_b(store: Store, sync_id: str, result: FeedStageResult) -> None:
    """Exactly the second file: its 6 rows and its bad line 5; nothing of the first file, no fragment."""
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == ("staged", 6, 1, 8)
    with store.session() as s:
        staged = {r.key: r.data for r in s.exec(select(FeedStage).where(FeedStage.sync_id == sync_id))}
        rejected = [r.line for r in s.exec(select(FeedRejection).where(FeedRejection.sync_id == sync_id))]
        sync = s.get(FeedSync, sync_id)
    assert sorted(staged) == B_SKUS
    assert (staged["bravo-4"]["price"], staged["bravo-4"]["name"]) == (40.5, "Bravo product number 4")
    assert rejected == [5]
    assert sync is not None and (sync.rows_accepted, sync.rows_rejected, sync.lines_read) == (6, 1, 8)


async def _s3_feed(api: httpx.AsyncClient, section: SectionKeys, settings: Settings) -> tuple[str, str, str]:
    bucket, key = FEED_BUCKET, f"{section.id}/exports/catalog.csv"
    s3 = feed_bucket(settings)
    s3.put_object(Bucket=bucket, Key=key, Body=A_FILE)
    return await create_feed(api, section, source="s3", s3_bucket=bucket, s3_key=key), bucket, key


async def test_s3_feed_replaced_during_an_interrupted_sync_is_read_again_from_its_start(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """The retry finds another ETag: rows, counters and rejections of the first file are discarded
    and the new object is read whole (not from the heartbeat's offset)."""
    feed, bucket, key = await _s3_feed(api, section, settings)
    acts, req = _begin(store, settings, feed)
    beat = _crash_after_committed_batches(acts, req)
    objects.client(settings).put_object(Bucket=bucket, Key=key, Body=B_FILE)  # the customer replaces it
    _assert_only_b(store, req.sync_id, _resume(acts, req, beat))
    with store.session() as s:
        sync = s.get(FeedSync, req.sync_id)
    head = objects.client(settings).head_object(Bucket=bucket, Key=key)
    assert sync is not None and sync.source_etag == head["ETag"]


async def test_s3_feed_replaced_between_head_and_ranged_get_is_not_spliced(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranged resume asks for the ETag it checked (If-Match): a file replaced after the check
    fails the attempt (retryable), and the retry starts the new file over."""
    feed, bucket, key = await _s3_feed(api, section, settings)
    acts, req = _begin(store, settings, feed)
    beat = _crash_after_committed_batches(acts, req)
    racing = _ReplacedAfterHead(objects.client(settings), bucket, key, B_FILE)
    with monkeypatch.context() as m:
        m.setattr(objects, "client", lambda *a, **k: racing)
        with pytest.raises(ApplicationError) as failed:
            _resume(acts, req, beat)
    assert failed.value.type == "SourceChanged" and not failed.value.non_retryable
    _assert_only_b(store, req.sync_id, _resume(acts, req, beat))  # Temporal's retry, same heartbeat


VALIDATORS = {
    "etag": ('"v1-a"', '"v2-b"'),
    "last-modified": ("Mon, 06 Jul 2026 10:00:00 GMT", "Mon, 06 Jul 2026 10:05:00 GMT"),
}


class _RangedServer:
    """A feed URL answering ranged GETs (206) like a real server, with a version header; If-Range is
    honoured (the whole new file, 200, when it does not match) unless `honour_if_range` is false."""

    def __init__(self, header: str, honour_if_range: bool = True) -> None:
        self.header, self.honour_if_range = header, honour_if_range
        self.body, self.version = A_FILE.decode(), VALIDATORS[header][0]

    def replace(self, body: bytes) -> None:
        self.body, self.version = body.decode(), VALIDATORS[self.header][1]

    def __call__(self, req: Received) -> Reply:
        headers = {self.header: self.version, "content-type": "text/csv"}
        rng, if_range = req.headers.get("range"), req.headers.get("if-range")
        if rng and (if_range in (None, self.version) or not self.honour_if_range):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            size = len(self.body)
            return Reply(206, self.body[start:], {**headers, "content-range": f"bytes {start}-{size - 1}/{size}"})
        return Reply(200, self.body, headers)


@pytest.mark.parametrize("header", sorted(VALIDATORS))
async def test_url_feed_changed_during_an_interrupted_sync_is_read_again_from_its_start(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, provider: ProviderServer,
    header: str,
) -> None:
    """The resumed GET sends If-Range with the ETag (or Last-Modified) of the file read so far; the
    server answers the whole changed file (200) and the sync reads it from its start."""
    path = f"/feed-{secrets.token_hex(3)}.csv"
    server = _RangedServer(header)
    provider.handler(path, server)
    feed = await create_feed(api, section, source="url", url=provider.url(path))
    acts, req = _begin(store, settings, feed)
    beat = _crash_after_committed_batches(acts, req)
    server.replace(B_FILE)
    _assert_only_b(store, req.sync_id, _resume(acts, req, beat))
    resumed = provider.to(path)[-1]
    assert resumed.headers.get("if-range") == VALIDATORS[header][0] and resumed.headers.get("range")


async def test_url_feed_server_ignoring_if_range_is_not_spliced(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, provider: ProviderServer
) -> None:
    """A server that answers the range of the new file (206) despite If-Range names another ETag: the
    attempt fails (retryable) and the retry, from the same heartbeat, reads the new file whole."""
    path = f"/feed-{secrets.token_hex(3)}.csv"
    server = _RangedServer("etag", honour_if_range=False)
    provider.handler(path, server)
    feed = await create_feed(api, section, source="url", url=provider.url(path))
    acts, req = _begin(store, settings, feed)
    beat = _crash_after_committed_batches(acts, req)
    server.replace(B_FILE)
    with pytest.raises(ApplicationError) as failed:
        _resume(acts, req, beat)
    assert failed.value.type == "SourceChanged" and not failed.value.non_retryable
    _assert_only_b(store, req.sync_id, _resume(acts, req, beat))
    assert "range" not in provider.to(path)[-1].headers  # the retry asked for the whole file


async def test_unchanged_url_feed_resumes_at_its_offset(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, provider: ProviderServer
) -> None:
    """Pinning costs nothing when the file did not change: the retry reads only the rest (206)."""
    path = f"/feed-{secrets.token_hex(3)}.csv"
    server = _RangedServer("etag")
    server.body = B_FILE.decode()
    provider.handler(path, server)
    feed = await create_feed(api, section, source="url", url=provider.url(path))
    acts, req = _begin(store, settings, feed)
    beat = _crash_after_committed_batches(acts, req)
    _assert_only_b(store, req.sync_id, _resume(acts, req, beat))
    resumed = provider.to(path)[-1]
    assert resumed.headers.get("range") == f"bytes={beat['offset']}-" and resumed.headers.get("if-range") == '"v1-a"'
