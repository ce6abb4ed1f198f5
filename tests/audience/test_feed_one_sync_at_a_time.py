"""A feed syncs one file at a time: an upload (`PUT /feeds/{id}/file`) or `POST /feeds/{id}/sync`
while a sync the API started for the feed is running is a 409 naming it, never a second full sync
beside it (a re-probe trial's finding: 8 concurrent uploads to one feed ran 8 syncs, 8 PostgreSQL
backends busy). And an upload is for `source: upload` feeds: a url or s3 feed's upload was accepted
and synced from the uploaded file, as if it were the URL's."""

from __future__ import annotations

import secrets

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.routes import feeds as feed_routes
from settings import Settings
from tests.audience.feed_helpers import FEED_BUCKET, create_feed, csv_bytes, upload_feed
from tests.helpers import SectionKeys
from workflows.feed_models import FeedSyncInput
from workflows.feeds import FeedSyncWorkflow
from workflows.ids import feed_sync_now_id


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def test_an_upload_or_sync_while_the_feeds_sync_runs_is_a_409_naming_it(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    feed = await create_feed(api, section)
    first = await upload_feed(api, env.client, section, feed, csv_bytes("sku,price", "one-1,5"))
    assert first.state == "succeeded", first
    # A sync that stays running: on a task queue no worker polls.
    wid = feed_sync_now_id(section.id, feed)
    running = await env.client.start_workflow(
        FeedSyncWorkflow.run, FeedSyncInput(section_id=section.id, feed_id=feed), id=wid,
        task_queue="nobody-" + secrets.token_hex(4),
    )  # fmt: skip
    try:
        r = await api.put(f"/api/v1/feeds/{feed}/file", content=csv_bytes("sku,price", "two-1,5"), headers=section.mgmt)
        assert r.status_code == 409 and wid in r.json()["error"] and "one file at a time" in r.json()["error"], r.text
        # The atomic refusal too (two requests past the check at once): Temporal refuses the id.
        async def unchecked(*_: object, **__: object) -> None:
            return None

        monkeypatch.setattr(feed_routes, "_refuse_while_syncing", unchecked)
        r = await api.put(f"/api/v1/feeds/{feed}/file", content=csv_bytes("sku,price", "two-1,5"), headers=section.mgmt)
        assert r.status_code == 409 and wid in r.json()["error"], r.text
        monkeypatch.undo()

        url_feed = await create_feed(api, section, source="url", url="http://127.0.0.1:9/feed.csv")
        url_wid = feed_sync_now_id(section.id, url_feed)
        await env.client.start_workflow(
            FeedSyncWorkflow.run, FeedSyncInput(section_id=section.id, feed_id=url_feed), id=url_wid,
            task_queue="nobody-" + secrets.token_hex(4),
        )  # fmt: skip
        r = await api.post(f"/api/v1/feeds/{url_feed}/sync", headers=section.mgmt)
        assert r.status_code == 409 and url_wid in r.json()["error"], r.text
        await env.client.get_workflow_handle(url_wid).terminate("test")
    finally:
        await running.terminate("test")
    after = await upload_feed(api, env.client, section, feed, csv_bytes("sku,price", "one-1,6"))
    assert after.state == "succeeded", after


@pytest.mark.parametrize("source", ["url", "s3"])
async def test_an_upload_to_a_url_or_s3_feed_is_a_409_naming_its_source(
    api: httpx.AsyncClient, section: SectionKeys, source: str
) -> None:
    extra = (
        {"url": "http://127.0.0.1:9/feed.csv"} if source == "url"
        else {"s3_bucket": FEED_BUCKET, "s3_key": f"{section.id}/catalog.csv"}
    )  # fmt: skip
    feed = await create_feed(api, section, source=source, **extra)
    r = await api.put(f"/api/v1/feeds/{feed}/file", content=csv_bytes("sku,price", "x-1,5"), headers=section.mgmt)
    assert r.status_code == 409 and f"has source {source}" in r.json()["error"], r.text
    assert "source upload" in r.json()["error"], r.text
