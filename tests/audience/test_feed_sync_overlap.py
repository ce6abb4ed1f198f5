"""A feed syncs one file at a time whoever started the sync, and a sync whose workflow died is ended.

A trial's findings: (1) with a sync the API started running (`feed/<sec>/<feed>/now`), the feed's
`sync_every` schedule fired and its sync (`feed/<sec>/<feed>-<time>`) ran beside it, both `succeeded`;
(2) a terminated sync left its row `running` forever. Now a sync begun while another of the feed runs
ends `skipped` at once, reading nothing, its row naming the running one; and a `running` row whose
workflow ended without finishing it is ended `failed` when the feed's next sync begins.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from store.engine import Store
from store.feed_tables import FeedSync
from tests.audience.feed_helpers import create_feed, csv_bytes, feed_syncs
from tests.helpers import SectionKeys
from workflows.feed_models import FeedSyncInput, FeedSyncSummary
from workflows.feeds import FeedSyncWorkflow
from workflows.ids import feed_sync_id

FILE = csv_bytes("sku,price", "one-1,5", "one-2,6", "one-3,7")
HOLD = 20.0  # seconds a held read waits at most (under the URL read timeout, 30 s)


class SlowFeed:
    """A URL feed's server that sends the head of the file, then holds the rest until released."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Content-Length", str(len(FILE)))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                self.wfile.write(FILE[:12])
                self.wfile.flush()
                owner.release.wait(HOLD)
                self.wfile.write(FILE[12:])

            def log_message(self, *_: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/feed.csv"

    async def read_begun(self, count: int = 1) -> None:
        for _ in range(200):
            if len(self.requests) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the feed's file was asked for {len(self.requests)} times, not {count}")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow() -> Iterator[SlowFeed]:
    server = SlowFeed()
    yield server
    server.close()


async def _sync_now(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, feed: str
) -> WorkflowHandle[Any, Any]:
    r = await api.post(f"/api/v1/feeds/{feed}/sync", headers=sec.mgmt)
    assert r.status_code == 202, r.text
    return env.client.get_workflow_handle(r.json()["workflow_id"], run_id=r.json()["run_id"] or None)


async def test_a_scheduled_sync_while_an_api_sync_runs_is_skipped_reading_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, slow: SlowFeed
) -> None:
    feed = await create_feed(api, section, source="url", url=slow.url)
    first = await _sync_now(api, env, section, feed)
    await slow.read_begun()
    # What the feed's schedule starts when it fires (or `temporal schedule trigger`): its own id.
    scheduled_id = f"{feed_sync_id(section.id, feed)}-{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    second = await asyncio.wait_for(
        env.client.execute_workflow(
            FeedSyncWorkflow.run, FeedSyncInput(section_id=section.id, feed_id=feed), id=scheduled_id,
            task_queue=settings.task_queue,
        ),
        15,
    )  # fmt: skip
    assert second.state == "skipped", second
    assert len(slow.requests) == 1, slow.requests  # the skipped sync read nothing
    slow.release.set()
    done = FeedSyncSummary.model_validate(await asyncio.wait_for(first.result(), 30))
    assert done.state == "succeeded", done
    syncs = {s["id"]: s for s in await feed_syncs(api, section, feed)}
    assert syncs[done.sync_id]["state"] == "succeeded" and syncs[done.sync_id]["rows_accepted"] == 3, syncs
    skipped = syncs[second.sync_id]
    assert skipped["state"] == "skipped" and skipped["finished_at"] is not None, skipped
    assert done.sync_id in skipped["error"] and "one file at a time" in skipped["error"], skipped
    assert skipped["lines_read"] == 0 and skipped["rows_accepted"] == 0, skipped
    assert second.error == skipped["error"]


async def test_a_terminated_syncs_row_is_ended_failed_by_the_next_sync(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, slow: SlowFeed
) -> None:
    feed = await create_feed(api, section, source="url", url=slow.url)
    first = await _sync_now(api, env, section, feed)
    await slow.read_begun()
    await first.terminate("test: the operator ended it")
    [dead] = _rows(store, feed)
    assert dead.state == "running", dead
    slow.release.set()

    nxt = await _sync_now(api, env, section, feed)  # the same `/now` id: the terminated run is closed
    result = FeedSyncSummary.model_validate(await asyncio.wait_for(nxt.result(), 30))
    assert result.state == "succeeded", result  # a dead sync does not make the next one skip
    syncs = {s["id"]: s for s in await feed_syncs(api, section, feed)}
    ended = syncs[dead.id]
    assert ended["state"] == "failed" and ended["finished_at"] is not None, ended
    assert "ended without finishing it" in ended["error"] and "terminated" in ended["error"], ended
    assert (dead.workflow_id, dead.workflow_run_id) == (first.id, first.run_id)  # what was asked of Temporal


def _rows(store: Store, feed: str) -> list[FeedSync]:
    with store.session() as s:
        return list(s.exec(select(FeedSync).where(FeedSync.feed_id == feed)).all())
