"""An s3 feed reads only what its section may read: a bucket the operator opened to feeds
(`REJOIN_FEED_S3_BUCKETS`, never Rejoin's own bucket) and in it only the section's own folder
(`<section_id>/...`). The worker reads s3 feeds with Rejoin's own S3 credentials, which reach every
section's uploads and subscriber lists: before, section B named section A's uploaded feed file (or any
bucket those credentials read) and got its rows as B's products. Refused on save (422 naming the field)
and again at sync time (a feed saved before the rule ends `refused`, S3 never asked)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.feeds import FeedActivities
from api.main import create_app
from runtime.cli import load_settings
from settings import Settings
from store import objects
from store.engine import Store
from store.feed_tables import Feed
from store.tables import Product, now_utc
from tests.audience.feed_helpers import FEED_BUCKET, create_feed, csv_bytes, feed_bucket, feed_syncs, upload_feed
from tests.helpers import SectionKeys, make_section
from workflows.feed_models import FeedBeginRequest, FeedStageRequest, FeedSyncInput
from workflows.feeds import FeedSyncWorkflow


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _post_feed(api: httpx.AsyncClient, sec: SectionKeys, bucket: str, key: str) -> httpx.Response:
    body = {"kind": "product", "name": "F", "source": "s3", "s3_bucket": bucket, "s3_key": key}
    return await api.post("/api/v1/feeds", json=body, headers=sec.mgmt)


@pytest.mark.parametrize(
    ("bucket", "key", "field"),
    [
        ("corp-private", "hr/salaries.csv", "s3_bucket"),  # a bucket the operator did not open to feeds
        ("corp-private", "{sec}/catalog.csv", "s3_bucket"),
        ("rejoin-subscribers", "feeds/{other}/feed_1/20260101T000000000000-abc123.csv", "s3_bucket"),  # own bucket
        ("rejoin-subscribers", "{sec}/feeds/x.csv", "s3_bucket"),  # even the section's own folder there
        (FEED_BUCKET, "{other}/catalog.csv", "s3_key"),  # another section's folder
        (FEED_BUCKET, "catalog.csv", "s3_key"),
        (FEED_BUCKET, "feeds/{sec}/feed_1/x.csv", "s3_key"),
        (FEED_BUCKET, "{sec}/../{other}/catalog.csv", "s3_key"),
        (FEED_BUCKET, "{sec}/./catalog.csv", "s3_key"),
        (FEED_BUCKET, "{sec}/", "s3_key"),
        (FEED_BUCKET, "{sec}x/catalog.csv", "s3_key"),  # a section id that merely begins with this one
    ],
)
async def test_an_s3_feed_outside_the_sections_folder_of_an_allowed_bucket_is_refused_on_save(
    api: httpx.AsyncClient, section: SectionKeys, bucket: str, key: str, field: str
) -> None:
    other = await make_section(api)
    r = await _post_feed(api, section, bucket, key.format(sec=section.id, other=other.id))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field], r.text
    if field == "s3_key":
        assert f"{section.id}/" in r.json()["error"], r.text  # says where the section's files go


async def test_an_s3_feed_in_the_sections_own_folder_is_saved_and_synced(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings
) -> None:
    key = f"{section.id}/exports/catalog.csv"
    feed_bucket(settings).put_object(Bucket=FEED_BUCKET, Key=key, Body=csv_bytes("sku,price", "own-1,5"))
    feed = await create_feed(api, section, source="s3", s3_bucket=FEED_BUCKET, s3_key=key)
    summary = await env.client.execute_workflow(
        FeedSyncWorkflow.run, FeedSyncInput(section_id=section.id, feed_id=feed),
        id=f"feed-own/{secrets.token_hex(4)}", task_queue=settings.task_queue,
    )  # fmt: skip
    assert summary.state == "succeeded", summary


@pytest.fixture
async def api_without_s3_feeds(
    env: WorkflowEnvironment, settings: Settings, store: Store
) -> AsyncIterator[httpx.AsyncClient]:
    """The API of a deployment that did not set REJOIN_FEED_S3_BUCKETS (the default)."""
    app = create_app(settings.model_copy(update={"feed_s3_buckets": ""}), store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as client:
        yield client


async def test_s3_feeds_are_refused_by_default_saying_how_to_enable_them(
    api_without_s3_feeds: httpx.AsyncClient, section: SectionKeys
) -> None:
    r = await _post_feed(api_without_s3_feeds, section, "any-bucket", f"{section.id}/catalog.csv")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "source"], r.text
    assert "REJOIN_FEED_S3_BUCKETS" in r.json()["error"], r.text
    upload = {"kind": "product", "name": "F"}  # other sources are unaffected
    assert (await api_without_s3_feeds.post("/api/v1/feeds", json=upload, headers=section.mgmt)).status_code == 201


def _saved_before_the_rule(store: Store, section_id: str, bucket: str, key: str) -> str:
    """An s3 feed row as saved before the rule existed (or edited in the database): no API check ran."""
    feed_id = "feed_" + secrets.token_hex(6)
    with store.session() as s:
        s.add(Feed(id=feed_id, section_id=section_id, kind="product", name="old", source="s3", s3_bucket=bucket,
                   s3_key=key, created_at=now_utc()))  # fmt: skip
    return feed_id


class _NoS3:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("S3 was called for a feed whose location is refused")


async def test_an_old_feed_naming_another_sections_upload_ends_refused_without_reading_it(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The trial's attack: section A uploads its feed; section B's s3 feed names A's file in Rejoin's
    bucket. B's sync ends `refused`, naming why; A's products never become B's; S3 is not asked."""
    victim = await make_section(api)
    a_feed = await create_feed(api, victim)
    uploaded = await upload_feed(api, env.client, victim, a_feed, csv_bytes("sku,price", "secret-a,9"))
    assert uploaded.state == "succeeded", uploaded
    [a_key] = objects.uploads(settings).keys(objects.upload_prefix(victim.id, a_feed))
    b_feed = await asyncio.to_thread(_saved_before_the_rule, store, section.id, settings.subscriber_bucket, a_key)
    monkeypatch.setattr(objects, "client", _NoS3())
    summary = await env.client.execute_workflow(
        FeedSyncWorkflow.run, FeedSyncInput(section_id=section.id, feed_id=b_feed),
        id=f"feed-foreign/{secrets.token_hex(4)}", task_queue=settings.task_queue,
    )  # fmt: skip
    assert summary.state == "refused", summary
    sync = (await feed_syncs(api, section, b_feed))[0]
    assert sync["state"] == "refused" and "s3_bucket" in sync["error"] and sync["rows_accepted"] == 0, sync
    with store.session() as s:
        assert s.get(Product, (section.id, "secret-a")) is None


@pytest.mark.parametrize(
    ("buckets", "bucket", "key", "field"),
    [
        ("", FEED_BUCKET, "{sec}/catalog.csv", "source"),  # the operator has since removed every bucket
        (FEED_BUCKET, "corp-private", "hr/salaries.csv", "s3_bucket"),
        (FEED_BUCKET, FEED_BUCKET, "sec_other/catalog.csv", "s3_key"),
    ],
)
async def test_a_sync_of_a_feed_breaking_the_rule_is_refused_before_s3_is_asked(
    section: SectionKeys, settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch,
    buckets: str, bucket: str, key: str, field: str,
) -> None:  # fmt: skip
    feed = _saved_before_the_rule(store, section.id, bucket, key.format(sec=section.id))
    acts = FeedActivities(store, settings.model_copy(update={"feed_s3_buckets": buckets}))
    sync_id = "fsync_" + secrets.token_hex(6)
    ActivityEnvironment().run(acts.begin, FeedBeginRequest(sync_id=sync_id, feed_id=feed, as_of=datetime.now(UTC)))
    monkeypatch.setattr(objects, "client", _NoS3())
    result = ActivityEnvironment().run(acts.stage, FeedStageRequest(sync_id=sync_id, feed_id=feed, max_rejected_rows=1))
    assert result.state == "refused" and result.error is not None and result.error.startswith(f"{field}:"), result
    # No "not found" / "access denied" answer: nothing tells the section whether the object exists.
    assert "not found" not in result.error.lower()


def test_the_setting_lists_buckets_and_never_rejoins_own(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(feed_s3_buckets=" a-feeds , b.feeds,, ").feed_buckets == ["a-feeds", "b.feeds"]
    assert Settings().feed_buckets == []  # default: s3 feeds off
    with pytest.raises(ValidationError, match="Rejoin's own bucket"):
        Settings(subscriber_bucket="shared", feed_s3_buckets="feeds,shared")
    with pytest.raises(ValidationError, match="not an S3 bucket name"):
        Settings(feed_s3_buckets="corp-private/hr")
    monkeypatch.setenv("REJOIN_FEED_S3_BUCKETS", "rejoin-subscribers")
    with pytest.raises(SystemExit) as exited:
        load_settings()
    lines = str(exited.value.code).splitlines()
    assert any(line.strip().startswith("REJOIN_FEED_S3_BUCKETS:") and "own bucket" in line for line in lines), lines


async def test_a_bucket_not_open_to_feeds_is_refused_without_listing_the_operators_buckets(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """The refusal named every bucket the operator opened to feeds (any section's): a re-probe
    trial's finding. It names the setting instead, for the operator."""
    r = await _post_feed(api, section, "corp-private", f"{section.id}/catalog.csv")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "s3_bucket"], r.text
    assert FEED_BUCKET not in r.text and "rejoin-test-feeds-absent" not in r.text, r.text
    assert "'corp-private'" in r.json()["error"] and "REJOIN_FEED_S3_BUCKETS" in r.json()["error"], r.text
