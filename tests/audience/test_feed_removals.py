"""Full product feeds remove products a later file leaves out (kept, recorded, out of stock), with a
safety valve against truncated files; delta feeds never remove."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.feed_tables import ProductChange
from tests.audience.feed_helpers import (
    batch_campaign,
    create_feed,
    csv_bytes,
    feed_syncs,
    get_product,
    run_result,
    upload_feed,
)
from tests.helpers import SectionKeys, add_integration, add_to_cart, collect, create_campaign, outbox, reachable_user
from workflows.feed_models import FeedSyncSummary
from workflows.feeds import FeedSyncWorkflow

FULL = "sku,name,price,in_stock"


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _changes(store: Store, sync_id: str) -> dict[tuple[str, str], tuple[Any, Any]]:
    with store.session() as s:
        rows = s.exec(select(ProductChange).where(ProductChange.sync_id == sync_id)).all()
    return {(c.sku, c.field): (c.old, c.new) for c in rows}


async def _forced(api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, feed: str, body: bytes) -> Any:
    r = await api.put(f"/api/v1/feeds/{feed}/file", params={"force": "true"}, content=body, headers=sec.mgmt)
    assert r.status_code == 202, r.text
    handle = env.client.get_workflow_handle_for(FeedSyncWorkflow.run, r.json()["workflow_id"])
    return await asyncio.wait_for(handle.result(), 60)


async def _four(api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, feed: str) -> FeedSyncSummary:
    rows = [f"sku-{c},Item {c},10,true" for c in "abcd"]
    summary = await upload_feed(api, env.client, sec, feed, csv_bytes(FULL, *rows))
    assert summary.state == "succeeded", summary
    return summary


async def test_full_feed_marks_missing_products_removed_and_restores_them(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A product missing from the next full file is kept, out of stock and `removed` (both recorded); listed
    again (without an in_stock column) it comes back with its stock flag. Catalog API products are untouched."""
    r = await api.put("/api/v1/products", json=[{"sku": "sku-api", "name": "By API", "price": 5}], headers=section.mgmt)
    assert r.status_code in (200, 201, 204), r.text
    feed = await create_feed(api, section)
    await _four(api, env, section, feed)
    second = await upload_feed(
        api, env.client, section, feed, csv_bytes(FULL, *(f"sku-{c},Item {c},10,true" for c in "abc"))
    )
    assert (second.state, second.removed) == ("succeeded", 1), second
    gone = await get_product(api, section, "sku-d")
    assert gone["in_stock"] is False and gone["attributes"]["removed"] is True and gone["price"] == 10
    assert _changes(store, second.sync_id) == {("sku-d", "removed"): (None, True), ("sku-d", "in_stock"): (True, False)}
    assert (await feed_syncs(api, section, feed))[0]["removed"] == 1
    assert (await get_product(api, section, "sku-api"))["name"] == "By API"

    back = await upload_feed(
        api, env.client, section, feed, csv_bytes("sku,name,price", *(f"sku-{c},Item {c},10" for c in "abcd"))
    )
    assert (back.state, back.removed) == ("succeeded", 0), back
    again = await get_product(api, section, "sku-d")
    assert again["in_stock"] is True and "removed" not in again["attributes"]
    assert _changes(store, back.sync_id) == {("sku-d", "removed"): (True, None), ("sku-d", "in_stock"): (False, True)}


async def test_truncated_full_file_is_refused_unless_forced(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A file removing more than half of the feed changes nothing and says how to force it; forced, it applies."""
    feed = await create_feed(api, section)
    await _four(api, env, section, feed)
    truncated = csv_bytes(FULL, "sku-a,Item a,7,true")
    refused = await upload_feed(api, env.client, section, feed, truncated)
    assert (refused.state, refused.removed, refused.runs) == ("refused", 3, []), refused
    status = (await feed_syncs(api, section, feed))[0]
    assert status["state"] == "refused" and "3 of the feed's 4" in status["error"] and "force" in status["error"]
    assert (await get_product(api, section, "sku-a"))["price"] == 10  # nothing of the file was applied
    assert (await get_product(api, section, "sku-b"))["in_stock"] is True

    forced = await _forced(api, env, section, feed, truncated)
    assert (forced.state, forced.removed) == ("succeeded", 3), forced
    assert (await get_product(api, section, "sku-a"))["price"] == 7
    assert (await get_product(api, section, "sku-b"))["attributes"]["removed"] is True


async def test_delta_feed_never_removes(api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys) -> None:
    feed = await create_feed(api, section, mode="delta")
    await _four(api, env, section, feed)
    summary = await upload_feed(api, env.client, section, feed, csv_bytes(FULL, "sku-a,Item a,8,true"))
    assert (summary.state, summary.removed) == ("succeeded", 0), summary
    assert (await get_product(api, section, "sku-b"))["in_stock"] is True


async def test_removed_product_counts_as_out_of_stock_for_campaigns(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """An "out of stock" campaign (in_stock true -> false) fires for cart holders of a removed product, and the
    message's item says it is out of stock and removed."""
    await add_integration(api, section)
    rule = {"attribute": "in_stock", "old": [{"op": "eq", "value": True}], "new": [{"op": "eq", "value": False}]}
    await create_campaign(api, section, batch_campaign("product_attribute_change", attribute_change=rule))
    feed = await create_feed(api, section)
    await _four(api, env, section, feed)
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-d", 10))
    summary = await upload_feed(
        api, env.client, section, feed, csv_bytes(FULL, *(f"sku-{c},Item {c},10,true" for c in "abc"))
    )
    (run_id,) = summary.runs
    assert (await run_result(env.client, run_id)).sent == 1
    (item,) = (await outbox(api, section))[0]["payload"]["items"]
    assert (item["sku"], item["old_value"], item["new_value"], item["in_stock"]) == ("sku-d", True, False, False)
    assert item["removed"] is True  # product records carry attributes at the top level
