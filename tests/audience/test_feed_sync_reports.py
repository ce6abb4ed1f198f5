"""Feed syncs tell the user what they did not expect: an S3 file or bucket that is missing fails at once
naming it (not after retries of a 404), and SKUs listed twice are counted and named (the last row wins).
S3 is moto on loopback (the `s3` fixture)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.feeds import FeedActivities
from settings import Settings
from store.engine import Store
from tests.audience.feed_helpers import (
    ABSENT_FEED_BUCKET,
    FEED_BUCKET,
    crash_then_resume,
    create_feed,
    csv_bytes,
    feed_bucket,
    feed_syncs,
    get_product,
    upload_feed,
)
from tests.helpers import SectionKeys
from workflows.feed_models import FeedBeginRequest, FeedStageRequest, FeedSyncInput
from workflows.feeds import FeedSyncWorkflow


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _begin(store: Store, settings: Settings, feed: str, batch_size: int = 1000) -> tuple[FeedActivities, Any]:
    acts = FeedActivities(store, settings)
    sync_id = "fsync_" + secrets.token_hex(6)
    ActivityEnvironment().run(acts.begin, FeedBeginRequest(sync_id=sync_id, feed_id=feed, as_of=datetime.now(UTC)))
    return acts, FeedStageRequest(sync_id=sync_id, feed_id=feed, max_rejected_rows=10, batch_size=batch_size)


@pytest.mark.parametrize("missing", ["key", "bucket"])
async def test_missing_s3_feed_file_fails_at_once_naming_bucket_and_key(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, missing: str
) -> None:
    bucket, key = (FEED_BUCKET if missing == "key" else ABSENT_FEED_BUCKET), f"{section.id}/exports/catalog.csv"
    if missing == "key":
        feed_bucket(settings)
    feed = await create_feed(api, section, source="s3", s3_bucket=bucket, s3_key=key)
    acts, req = _begin(store, settings, feed)
    with pytest.raises(ApplicationError) as failed:
        ActivityEnvironment().run(acts.stage, req)
    assert failed.value.non_retryable and failed.value.type == "NoSource"
    assert failed.value.message == f"s3://{bucket}/{key} not found"


async def test_missing_s3_feed_file_shows_not_found_on_the_sync(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings
) -> None:
    """Through the workflow: the sync fails on its first attempt and its status names the file."""
    bucket = ABSENT_FEED_BUCKET
    feed = await create_feed(api, section, source="s3", s3_bucket=bucket, s3_key=f"{section.id}/a.csv")
    started = datetime.now(UTC)
    summary = await env.client.execute_workflow(
        FeedSyncWorkflow.run,
        FeedSyncInput(section_id=section.id, feed_id=feed),
        id=f"feed-missing/{secrets.token_hex(4)}",
        task_queue=settings.task_queue,
    )
    assert summary.state == "failed"
    assert (datetime.now(UTC) - started).total_seconds() < 2  # not 5 attempts with backoff
    sync = (await feed_syncs(api, section, feed))[0]
    assert sync["state"] == "failed" and f"s3://{bucket}/{section.id}/a.csv not found" in sync["error"], sync


async def test_duplicate_skus_are_counted_and_named_and_the_last_row_wins(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    feed = await create_feed(api, section)
    content = csv_bytes("sku,price", "a,1", "b,2", "a,3", "c,4", "b,5", "a,6")
    summary = await upload_feed(api, env.client, section, feed, content)
    assert (summary.state, summary.duplicates) == ("succeeded", 3), summary
    sync = (await feed_syncs(api, section, feed))[0]
    assert (sync["rows_accepted"], sync["duplicates"], sync["duplicate_keys"]) == (6, 3, ["a", "b"]), sync
    assert (await get_product(api, section, "a"))["price"] == 6
    assert (await get_product(api, section, "b"))["price"] == 5
    summary = await upload_feed(api, env.client, section, feed, csv_bytes("sku,price", "a,1", "b,2", "c,3"))
    sync = (await feed_syncs(api, section, feed))[0]
    assert (summary.duplicates, sync["duplicates"], sync["duplicate_keys"]) == (0, 0, []), sync


async def test_duplicates_across_batches_and_a_resumed_attempt_are_counted_once(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """Batches of 2 rows: the repeats fall in later batches than their first rows; the attempt dies at its
    second heartbeat and the retry resumes there: the count stays exact."""
    bucket, key = FEED_BUCKET, f"{section.id}/catalog.csv"
    s3 = feed_bucket(settings)
    rows = ["x,1", "y,2", "z,3", "w,4", "x,5", "q,6", "y,7", "r,8"]
    s3.put_object(Bucket=bucket, Key=key, Body=csv_bytes("sku,price", *rows))
    feed = await create_feed(api, section, source="s3", s3_bucket=bucket, s3_key=key)
    acts, req = _begin(store, settings, feed, batch_size=2)
    _, _, result = crash_then_resume(acts.stage, req)
    assert (result.state, result.rows_accepted, result.duplicates) == ("staged", 8, 2), result
    assert result.duplicate_keys == ["x", "y"]
