"""A feed URL that hangs fails each attempt after a clear timeout; a file of only bad rows is rejected.

A trial's URL accepted the connection and never answered: the sync stayed `running` with no `error` for
5.5 minutes (60 s per attempt, 5 attempts), then failed with httpx's bare "timed out", not naming the
URL as a 404 does. Now each attempt gives up after `URL_TIMEOUT` (shortened here), its reason naming the
URL and the wait, and the sync shows the failed attempt's reason while it is retried.

The same trial's delta feed of three bad rows ended `succeeded`, 0 accepted: a file with rows none of
which is accepted is now `rejected` in either mode, nothing applied.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import select
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities import streams
from activities.feeds import FeedActivities
from settings import Settings
from store.engine import Store
from store.feed_tables import FeedSync
from tests.audience.feed_helpers import create_feed, csv_bytes, feed_syncs, get_product, upload_feed
from tests.helpers import SectionKeys
from workflows.feed_models import FeedBeginRequest, FeedFinishRequest, FeedStageRequest

WAIT = 0.5  # URL_TIMEOUT in these tests


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


@pytest.fixture(autouse=True)
def _short_url_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "URL_TIMEOUT", WAIT)


class _Silent:
    """A TCP server that accepts connections, reads nothing, and answers `prefix` (possibly nothing),
    then holds the connection open without another byte."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.prefix:
                conn.sendall(self.prefix)
            self.held.append(conn)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/feed.csv"

    def close(self) -> None:
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[_Silent]:
    server = _Silent()
    yield server
    server.close()


def _attempt(number: int, of: int = 5) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=number, retry_policy=RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=of)
    )
    return env


def _begun(acts: FeedActivities, feed: str) -> str:
    sync_id = "fsync_" + secrets.token_hex(6)
    ActivityEnvironment().run(acts.begin, FeedBeginRequest(sync_id=sync_id, feed_id=feed, as_of=datetime.now(UTC)))
    return sync_id


def _stage_fails(acts: FeedActivities, env: ActivityEnvironment, feed: str, sync_id: str) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(ApplicationError) as caught:
        env.run(acts.stage, FeedStageRequest(sync_id=sync_id, feed_id=feed, max_rejected_rows=10))
    assert not caught.value.non_retryable, caught.value  # the server may answer by the next attempt
    return caught.value.message, time.monotonic() - started


async def test_hanging_feed_url_fails_the_attempt_naming_url_and_timeout(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, silent: _Silent
) -> None:
    """An attempt against a server that accepts and never answers ends after URL_TIMEOUT with a
    reason naming the URL and the wait; the running sync shows it (retrying) in the status."""
    feed = await create_feed(api, section, source="url", url=silent.url())
    acts = FeedActivities(store, settings)
    sync_id = _begun(acts, feed)
    message, took = _stage_fails(acts, _attempt(2), feed, sync_id)
    assert message == f"{silent.url()} did not answer within {WAIT:g} s", message
    assert took < WAIT + 3, took
    sync = (await feed_syncs(api, section, feed))[0]
    assert sync["state"] == "running", sync
    assert sync["error"] == f"attempt 2 of 5 failed: {message}; retrying", sync
    # The last attempt says so (no "retrying"); the workflow then ends the sync "sync gave up: <reason>".
    message, _ = _stage_fails(acts, _attempt(5), feed, sync_id)
    with store.session() as s:
        row = s.get(FeedSync, sync_id)
        assert row is not None and row.state == "running" and row.error == f"attempt 5 of 5 failed: {message}"


async def test_feed_url_that_stops_mid_file_names_url_and_bytes(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """A server that sends its headers and part of the file, then nothing, fails the attempt after
    URL_TIMEOUT without a byte, saying how far it got."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ncontent-length: 1000\r\n\r\n"
    server = _Silent(head + b"sku,price\nsku-a,1\n")
    url = server.url()
    try:
        feed = await create_feed(api, section, source="url", url=url)
        acts = FeedActivities(store, settings)
        message, took = _stage_fails(acts, _attempt(1), feed, _begun(acts, feed))
    finally:
        server.close()
    assert message == f"{url} stopped sending for {WAIT:g} s after 18 bytes", message
    assert took < WAIT + 3, took


async def test_unreachable_feed_url_names_the_url(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """Nothing listening (connection refused): the reason names the URL too, not just the socket error."""
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{spare.getsockname()[1]}/feed.csv"
    spare.close()
    feed = await create_feed(api, section, source="url", url=url)
    acts = FeedActivities(store, settings)
    message, _ = _stage_fails(acts, _attempt(1), feed, _begun(acts, feed))
    assert message.startswith(f"{url} could not be read: "), message


async def test_successful_attempt_clears_the_earlier_attempts_error(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """An attempt's reason shown while running does not outlive a later attempt that succeeds."""
    feed = await create_feed(api, section, kind="user")
    await upload_feed(api, env.client, section, feed, csv_bytes("cuid,tier", "c-1,gold"))
    acts = FeedActivities(store, settings)
    sync_id = _begun(acts, feed)
    with store.session() as s:
        row = s.get(FeedSync, sync_id)
        assert row is not None
        previous = s.exec(select(FeedSync).where(FeedSync.feed_id == feed, FeedSync.id != sync_id)).one()
        row.object_key, row.error = previous.object_key, "attempt 1 of 5 failed: boom; retrying"
        s.add(row)
    staged = ActivityEnvironment().run(
        acts.stage, FeedStageRequest(sync_id=sync_id, feed_id=feed, max_rejected_rows=10)
    )
    assert staged.state == "staged", staged
    ActivityEnvironment().run(acts.apply, FeedFinishRequest(sync_id=sync_id, result=staged, as_of=datetime.now(UTC)))
    with store.session() as s:
        row = s.get(FeedSync, sync_id)
        assert row is not None and (row.state, row.error) == ("succeeded", None)


@pytest.mark.parametrize("mode", ["delta", "full"])
async def test_file_with_rows_but_none_accepted_is_rejected(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, mode: str
) -> None:
    """Every row bad: `rejected` (not `succeeded` with 0 accepted, nor a full file removing the
    catalogue), the rejected lines kept, nothing applied."""
    feed = await create_feed(api, section, mode=mode)
    first = await upload_feed(api, env.client, section, feed, csv_bytes("sku,price", "sku-a,10", "sku-b,20"))
    assert first.state == "succeeded", first
    bad = csv_bytes("sku,price", "sku-a,abc", "sku-b,inf", "sku-c,x,extra")
    summary = await upload_feed(api, env.client, section, feed, bad)
    assert summary.state == "rejected" and summary.changes == 0, summary
    sync = (await feed_syncs(api, section, feed))[0]
    assert (sync["state"], sync["rows_accepted"], sync["rows_rejected"], sync["lines_read"]) == (
        "rejected", 0, 3, 4,
    ), sync  # fmt: skip
    assert "no row of the file was accepted (3 rejected" in sync["error"], sync
    assert "nothing was applied" in sync["error"]
    assert [r["line"] for r in sync["rejections"]] == [2, 3, 4]
    product = await get_product(api, section, "sku-a")
    assert product["price"] == 10 and "removed" not in product["attributes"], product
    # A file with only its header is no such case (a delta applies nothing; a full one lists nothing).
    if mode == "delta":
        empty = await upload_feed(api, env.client, section, feed, csv_bytes("sku,price"))
        assert empty.state == "succeeded", empty
