"""Product and user data feeds: parsing, status with rejected lines, atomic apply, sources."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.feeds import FeedActivities
from settings import Settings
from store.engine import Store
from store.feed_tables import FeedStage, ProductChange
from tests.audience.feed_helpers import crash_then_resume, create_feed, csv_bytes, feed_syncs, get_product, upload_feed
from tests.helpers import SectionKeys, collect, new_dyid
from tests.provider_server import ProviderServer, Reply
from workflows.feed_models import FeedBeginRequest, FeedStageRequest, FeedSyncInput
from workflows.feeds import FeedSyncWorkflow

HEADER = "sku,name,url,price,image_url,categories,in_stock,color,lng:fr_FR:name"


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def test_product_feed_upload_applies_rows_and_reports_bad_lines(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A product feed sets every column (attributes, localized names); bad lines are listed; changes keep old values."""
    feed = await create_feed(api, section)
    first = csv_bytes(
        HEADER,
        "sku-1,Shoe,https://shop.test/1,100,https://img.test/1.png,Shoes|Sale,true,red,Chaussure",
        "sku-2,Hat,https://shop.test/2,abc,,Hats,yes,blue,Chapeau",
        "sku-3,Scarf,https://shop.test/3,20,,Scarves,no,green",
        "sku-4,Bag,https://shop.test/4,55.5,,Bags,maybe,black,Sac",
    )
    summary = await upload_feed(api, env.client, section, feed, first)
    assert summary.state == "succeeded" and summary.changes == 0, summary
    sync = (await feed_syncs(api, section, feed))[0]
    assert (sync["state"], sync["rows_accepted"], sync["rows_rejected"]) == ("succeeded", 1, 3), sync
    reasons = {r["line"]: r["reason"] for r in sync["rejections"]}
    assert (
        set(reasons) == {3, 4, 5}
        and "price" in reasons[3]
        and "columns" in reasons[4]
        and "in_stock" in reasons[5]
    )
    product = await get_product(api, section, "sku-1")
    assert (
        product["price"] == 100 and product["in_stock"] is True and product["categories"] == ["Shoes", "Sale"]
    )
    assert product["attributes"] == {"color": "red", "lng": {"fr_FR": {"name": "Chaussure"}}}
    second = csv_bytes(
        HEADER, "sku-1,Shoe,https://shop.test/1,80,https://img.test/1.png,Shoes|Sale,false,red,Chaussure"
    )
    summary = await upload_feed(api, env.client, section, feed, second)
    assert summary.changes == 2, summary
    with store.session() as s:
        changes = {
            c.field: (c.old, c.new)
            for c in s.exec(select(ProductChange).where(ProductChange.sync_id == summary.sync_id))
        }
    assert changes == {"price": (100.0, 80.0), "in_stock": (True, False)}


async def test_feed_without_key_column_is_rejected_whole(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A product feed whose header lacks `sku` is rejected as a whole; nothing is applied."""
    feed = await create_feed(api, section)
    summary = await upload_feed(api, env.client, section, feed, csv_bytes("id,price", "sku-x,10"))
    assert summary.state == "rejected"
    sync = (await feed_syncs(api, section, feed))[0]
    assert sync["state"] == "rejected" and "sku" in sync["error"]
    assert await get_product(api, section, "sku-x") == {}


async def test_failed_feed_sync_changes_nothing(
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    section: SectionKeys,
    settings: Settings,
    provider: ProviderServer,
) -> None:
    """A feed sync that fails half way (too many bad rows) leaves every product as it was."""
    path = f"/feed-{secrets.token_hex(3)}.csv"
    provider.default(path, Reply(200, csv_bytes("sku,price", "sku-a,10", "sku-b,20").decode()))
    feed = await create_feed(api, section, source="url", url=provider.url(path))
    r = await api.post(f"/api/v1/feeds/{feed}/sync", headers=section.mgmt)
    assert r.status_code == 202, r.text
    assert (await env.client.get_workflow_handle(r.json()["workflow_id"]).result())["state"] == "succeeded"
    provider.default(
        path, Reply(200, csv_bytes("sku,price", "sku-a,5", "sku-b,x", "sku-c,y", "sku-d,2").decode())
    )
    result = await env.client.execute_workflow(
        FeedSyncWorkflow.run,
        FeedSyncInput(section_id=section.id, feed_id=feed, max_rejected_rows=1),
        id=f"feed-test/{secrets.token_hex(4)}",
        task_queue=settings.task_queue,
    )
    assert result.state == "failed"
    assert (await get_product(api, section, "sku-a"))["price"] == 10
    assert await get_product(api, section, "sku-d") == {}
    assert "not applied" in (await feed_syncs(api, section, feed))[0]["error"]


async def test_user_feed_sets_attributes_by_cuid_and_records_changes(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A user data feed keyed by CUID updates known users and creates unknown ones; changes are counted."""
    dyid = new_dyid()
    await collect(
        api, section, dyid, {"name": "Identify", "properties": {"dyType": "identify-v1", "cuid": "c-1"}}
    )
    feed = await create_feed(api, section, kind="user")
    await upload_feed(
        api, env.client, section, feed, csv_bytes("cuid,loyalty,points", "c-1,Bronze,10", "c-2,Gold,5")
    )
    summary = await upload_feed(
        api, env.client, section, feed, csv_bytes("cuid,loyalty", "c-1,Silver", "c-2,Gold")
    )
    assert summary.changes == 1, summary
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.json()["attributes"] == {"loyalty": "Silver", "points": 10}
    r = await api.get("/api/v1/users/c-2", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["attributes"] == {"loyalty": "Gold", "points": 5}


async def test_interrupted_feed_stage_resumes_with_its_header(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, provider: ProviderServer
) -> None:
    """A feed attempt that dies mid-file resumes at its heartbeat (header kept) and stages every row once."""
    path = f"/feed-{secrets.token_hex(3)}.csv"
    rows = [f"sku-{i},{i}.5,Name {i}" for i in range(7)]
    provider.default(path, Reply(200, csv_bytes("sku,price,name", *rows).decode()))
    feed = await create_feed(api, section, source="url", url=provider.url(path))
    acts = FeedActivities(store, settings)
    sync_id = "fsync_" + secrets.token_hex(6)
    ActivityEnvironment().run(
        acts.begin, FeedBeginRequest(sync_id=sync_id, feed_id=feed, as_of=datetime.now(UTC))
    )
    req = FeedStageRequest(sync_id=sync_id, feed_id=feed, max_rejected_rows=10, batch_size=2)
    _, _, result = crash_then_resume(acts.stage, req)
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == (
        "staged",
        7,
        0,
        8,
    )
    with store.session() as s:
        staged = {r.key: r.data for r in s.exec(select(FeedStage).where(FeedStage.sync_id == sync_id))}
    assert sorted(staged) == [f"sku-{i}" for i in range(7)] and staged["sku-6"]["price"] == 6.5


async def test_feed_url_to_a_private_address_is_refused(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """Outside dev/test, a feed URL resolving to a loopback/private address is never fetched (no SSRF)."""
    feed = await create_feed(api, section, source="url", url="http://127.0.0.1:9/feed.csv")
    acts = FeedActivities(store, settings.model_copy(update={"allow_private_urls": False}))
    sync_id = "fsync_" + secrets.token_hex(6)
    ActivityEnvironment().run(
        acts.begin, FeedBeginRequest(sync_id=sync_id, feed_id=feed, as_of=datetime.now(UTC))
    )
    with pytest.raises(ApplicationError, match="public address"):
        ActivityEnvironment().run(
            acts.stage, FeedStageRequest(sync_id=sync_id, feed_id=feed, max_rejected_rows=1)
        )


async def test_feed_source_errors_name_the_field(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """A url feed without an http(s) URL (`file:///etc/passwd`), an s3 feed without its key, a
    too-short interval: 422 with `loc` at the field (it was `["body"]`)."""
    cases = [
        ({"source": "url", "url": "file:///etc/passwd"}, ["body", "url"]),
        ({"source": "s3", "s3_bucket": "b"}, ["body", "s3_key"]),
        ({"source": "url", "url": "https://shop.example/feed.csv", "sync_every": "PT1M"}, ["body", "sync_every"]),
    ]
    for extra, loc in cases:
        r = await api.post("/api/v1/feeds", json={"kind": "product", "name": "F", **extra}, headers=section.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text
