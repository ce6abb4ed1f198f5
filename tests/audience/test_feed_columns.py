"""A product feed row sets only the columns its file has: a column left out keeps the stored value
(fields, attributes, categories, translations), in delta and full feeds, and records no false change."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.feed_tables import ProductChange
from tests.audience.feed_helpers import create_feed, csv_bytes, get_product, upload_feed
from tests.helpers import SectionKeys

FIRST = csv_bytes(
    "sku,name,price,in_stock,categories,brand,color,lng:fr_FR:name,lng:de_DE:name",
    "sku-x,Xylo,40,true,Toys|Music,Acme,red,Xylophone FR,Xylophon",
)


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _changes(store: Store, sync_id: str) -> dict[str, tuple[Any, Any]]:
    with store.session() as s:
        rows = s.exec(select(ProductChange).where(ProductChange.sync_id == sync_id)).all()
    return {c.field: (c.old, c.new) for c in rows}


@pytest.mark.parametrize("mode", ["delta", "full"])
async def test_columns_a_file_leaves_out_keep_their_values(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, mode: str
) -> None:
    """A `sku,price` file after a file with every column changes the price only: name, stock, categories,
    attributes and translations stay, and the only change recorded is the price (no brand -> null)."""
    feed = await create_feed(api, section, mode=mode)
    assert (await upload_feed(api, env.client, section, feed, FIRST)).state == "succeeded"
    second = await upload_feed(api, env.client, section, feed, csv_bytes("sku,price", "sku-x,35"))
    assert (second.state, second.changes) == ("succeeded", 1), second
    assert _changes(store, second.sync_id) == {"price": (40.0, 35.0)}
    product = await get_product(api, section, "sku-x")
    assert (product["name"], product["price"], product["in_stock"]) == ("Xylo", 35, True)
    assert product["categories"] == ["Toys", "Music"]
    assert product["attributes"] == {
        "brand": "Acme", "color": "red", "lng": {"fr_FR": {"name": "Xylophone FR"}, "de_DE": {"name": "Xylophon"}}
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["delta", "full"])
async def test_a_row_changes_only_what_its_columns_say(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, mode: str
) -> None:
    """Real changes are still recorded: one attribute, one translation of one locale (the other locale and
    the other attributes kept), and an empty attribute cell still clears that attribute."""
    feed = await create_feed(api, section, mode=mode)
    assert (await upload_feed(api, env.client, section, feed, FIRST)).state == "succeeded"
    body = csv_bytes("sku,brand,color,lng:fr_FR:name,lng:fr_FR:subtitle", "sku-x,Bolt,,Xylo FR,Rouge")
    second = await upload_feed(api, env.client, section, feed, body)
    assert second.state == "succeeded", second
    lng_before = {"fr_FR": {"name": "Xylophone FR"}, "de_DE": {"name": "Xylophon"}}
    lng_after = {"fr_FR": {"name": "Xylo FR", "subtitle": "Rouge"}, "de_DE": {"name": "Xylophon"}}
    assert _changes(store, second.sync_id) == {
        "brand": ("Acme", "Bolt"), "color": ("red", None), "lng": (lng_before, lng_after)
    }  # fmt: skip
    assert second.changes == 3, second
    product = await get_product(api, section, "sku-x")
    assert product["attributes"] == {"brand": "Bolt", "lng": lng_after}
    assert (product["name"], product["price"], product["categories"]) == ("Xylo", 40, ["Toys", "Music"])


async def test_categories_are_kept_without_their_column_and_cleared_by_an_empty_cell(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """`sku,categories` then `sku,price` keeps the categories (no change recorded for them); a present but
    empty `categories` cell clears them, as before."""
    feed = await create_feed(api, section, mode="delta")
    first = await upload_feed(api, env.client, section, feed, csv_bytes("sku,categories", "sku-c,Toys|Music"))
    assert first.state == "succeeded", first
    second = await upload_feed(api, env.client, section, feed, csv_bytes("sku,price", "sku-c,12"))
    assert _changes(store, second.sync_id) == {"price": (None, 12.0)}
    assert (await get_product(api, section, "sku-c"))["categories"] == ["Toys", "Music"]
    third = await upload_feed(api, env.client, section, feed, csv_bytes("sku,categories,name", "sku-c,,Cube"))
    assert _changes(store, third.sync_id) == {"categories": (["Toys", "Music"], []), "name": (None, "Cube")}
    assert (await get_product(api, section, "sku-c"))["categories"] == []
