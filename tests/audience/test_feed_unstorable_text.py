"""A feed file holding a NUL (which no PostgreSQL text or JSONB value can hold) in one row rejects that
row, saying which column, and the rest of the file applies; nothing stored holds the NUL (the reasons,
the sync's error). Before, the row was staged or its reason quoted it, and on PostgreSQL the whole
sync failed with psycopg.DataError, retried by Temporal. Feeds are CSV only: a lone surrogate cannot
come out of the strict UTF-8 decoding (its bytes are "not valid UTF-8"), which is pinned here too."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from domain import feeds as rules
from store.engine import Store
from store.feed_tables import FeedRejection, FeedStage, FeedSync
from store.tables import Product
from tests.audience.feed_helpers import create_feed, get_product
from tests.helpers import SectionKeys
from workflows.feed_models import FeedSyncSummary
from workflows.feeds import FeedSyncWorkflow


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _upload(
    api: httpx.AsyncClient, client: Client, sec: SectionKeys, feed_id: str, body: bytes
) -> FeedSyncSummary:
    headers = {**sec.mgmt, "content-type": "text/csv"}  # not read as JSON (a non-UTF-8 line is a bad row)
    r = await api.put(f"/api/v1/feeds/{feed_id}/file", content=body, headers=headers)
    assert r.status_code == 202, r.text
    handle = client.get_workflow_handle_for(FeedSyncWorkflow.run, r.json()["workflow_id"])
    # A sync that keeps failing on the database is retried: far longer than a good one takes.
    return await asyncio.wait_for(handle.result(), 30)


def _reasons(store: Store, sync_id: str) -> dict[int, str]:
    with store.session() as s:
        rows = s.exec(select(FeedRejection).where(FeedRejection.sync_id == sync_id)).all()
    return {r.line: r.reason for r in rows}


def _assert_nothing_holds_nul(store: Store, sync_id: str) -> None:
    with store.session() as s:
        sync = s.get(FeedSync, sync_id)
        assert sync is not None
        texts: list[Any] = [sync.error, sync.duplicate_keys]
        texts += [r.reason for r in s.exec(select(FeedRejection).where(FeedRejection.sync_id == sync_id))]
        texts += [p.model_dump() for p in s.exec(select(Product))]
        assert not s.exec(select(FeedStage).where(FeedStage.sync_id == sync_id)).all()
    assert "\0" not in repr(texts) and "\\x00" not in repr(texts), texts


async def test_csv_product_row_with_a_nul_is_rejected_naming_its_column(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A NUL in a field, an attribute, a price, a translation and the key each reject that row only."""
    feed = await create_feed(api, section)
    body = b"\n".join([
        b"sku,name,price,brand,lng:fr_FR:name",
        b"ok-1,Good,10,Acme,Bon",
        b"bad-name,Bad\x00Name,10,Acme,Bon",
        b"bad-attr,Fine,10,Ac\x00me,Bon",
        b"bad-price,Fine,1\x002,Acme,Bon",
        b"bad-lng,Fine,10,Acme,B\x00on",
        b"bad\x00key,Fine,10,Acme,Bon",
        b"ok-2,\xc3\xa9t\xc3\xa9,12,Acme,Bon",
        b"bad-utf8,\xed\xb2\x80,12,Acme,Bon",  # a lone surrogate's bytes: not UTF-8
        b"",
    ])  # fmt: skip
    result = await _upload(api, env.client, section, feed, body)
    assert result.state == "succeeded", result
    reasons = _reasons(store, result.sync_id)
    assert sorted(reasons) == [3, 4, 5, 6, 7, 9], reasons
    for line, column in ((3, "name"), (4, "brand"), (5, "price"), (6, "lng:fr_FR:name"), (7, "sku")):
        assert column in reasons[line] and "NUL" in reasons[line], reasons[line]
    assert reasons[9] == "not valid UTF-8"
    assert (await get_product(api, section, "ok-1"))["name"] == "Good"
    assert (await get_product(api, section, "ok-2"))["name"] == "été"
    assert await get_product(api, section, "bad-name") == {}
    _assert_nothing_holds_nul(store, result.sync_id)


async def test_csv_user_row_with_a_nul_is_rejected_naming_its_column(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    feed = await create_feed(api, section, kind="user")
    body = b"cuid,tier\nu-ok,gold\nu-bad,go\x00ld\nu\x00key,gold\n"
    result = await _upload(api, env.client, section, feed, body)
    assert result.state == "succeeded", result
    reasons = _reasons(store, result.sync_id)
    assert sorted(reasons) == [3, 4], reasons
    assert "tier" in reasons[3] and "NUL" in reasons[3] and "cuid" in reasons[4] and "NUL" in reasons[4]
    _assert_nothing_holds_nul(store, result.sync_id)


async def test_csv_header_with_a_nul_rejects_the_file_saying_so(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A column name is an attribute's key for every row: the file is rejected, its error storable."""
    feed = await create_feed(api, section)
    result = await _upload(api, env.client, section, feed, b"sku,col\x00or\nok-1,red\n")
    assert result.state == "rejected", result
    with store.session() as s:
        sync = s.get(FeedSync, result.sync_id)
        assert sync is not None and sync.error is not None
        assert "NUL" in sync.error and "\0" not in sync.error, sync.error
    assert await get_product(api, section, "ok-1") == {}


def test_parse_rules_reject_nul_and_lone_surrogates_in_any_cell() -> None:
    """The rule itself, for every column kind (a lone surrogate too, should a caller ever decode leniently)."""
    header = ["sku", "name", "price", "in_stock", "categories", "brand"]
    good = ["s", "n", "1", "true", "a|b", "x"]
    assert isinstance(rules.parse_product(header, good), dict)
    for i, column in enumerate(header):
        for bad in ("\0", "\udc80"):
            cells = [*good[:i], good[i] + bad, *good[i + 1 :]]
            reason = rules.parse_product(header, cells)
            assert isinstance(reason, str) and column in reason and "unstorable" in reason, (column, reason)
            assert "\0" not in reason and "\udc80" not in reason
    reason = rules.parse_user(["cuid", "tier"], ["u", "a\0"])
    assert isinstance(reason, str) and "tier" in reason and "NUL" in reason
    assert rules.header_error("product", ["sku", "co\0lor"]) is not None
    assert "\0" not in (rules.header_error("product", ["sku", "co\0lor"]) or "")
