"""Products a full feed no longer lists: found, checked against the safety valve, marked removed.

A removed product is not deleted: it keeps its row and history, gets `in_stock = false` and the
attribute `removed = true`, and both changes are recorded in `ProductChange` like any other
(so "went out of stock" campaigns see it). A later file that lists it again clears `removed`
(recorded too) and, without an `in_stock` column, restores the stock flag it had before.
All of it runs inside the feed's apply transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import ColumnElement, exists, func, update
from sqlmodel import Session, col, select

from store.feed_tables import Feed, FeedProduct, FeedStage, FeedSync, ProductChange
from store.subscribers import upsert
from store.tables import Product

CHUNK = 500


def _active(feed_id: str) -> tuple[ColumnElement[bool], ...]:
    return (col(FeedProduct.feed_id) == feed_id, col(FeedProduct.removed_at).is_(None))


def listed_count(s: Session, feed_id: str) -> int:
    return int(s.exec(select(func.count()).where(*_active(feed_id))).one())


def missing(s: Session, feed_id: str, sync_id: str) -> list[str]:
    """SKUs the feed listed until now that this sync's staged file leaves out."""
    staged = exists().where(col(FeedStage.sync_id) == sync_id, col(FeedStage.key) == col(FeedProduct.sku))
    return list(s.exec(select(FeedProduct.sku).where(*_active(feed_id), ~staged).order_by(col(FeedProduct.sku))))


def returning(s: Session, feed_id: str, skus: list[str]) -> dict[str, bool | None]:
    """Of these SKUs, those the feed had removed -> their stock flag before removal."""
    rows = s.exec(
        select(FeedProduct.sku, FeedProduct.stock_before).where(
            FeedProduct.feed_id == feed_id, col(FeedProduct.sku).in_(skus), col(FeedProduct.removed_at).is_not(None)
        )
    )
    return {sku: before for sku, before in rows.all()}  # noqa: C416  (Row objects, not pairs)


def mark_listed(s: Session, feed: Feed, sync_id: str, skus: list[str]) -> None:
    rows: list[dict[str, object]] = [
        {"feed_id": feed.id, "sku": sku, "section_id": feed.section_id, "last_sync_id": sync_id,
         "removed_at": None, "stock_before": None}
        for sku in skus
    ]  # fmt: skip
    upsert(s, FeedProduct, rows, ["feed_id", "sku"], ["last_sync_id", "removed_at", "stock_before"])


def remove(s: Session, feed: Feed, sync: FeedSync, skus: Iterable[str], now: datetime) -> int:
    """Mark these products of the feed removed; returns the number of recorded changes."""
    changes = 0
    batch: list[str] = []
    for sku in skus:
        batch.append(sku)
        if len(batch) == CHUNK:
            changes += _remove_batch(s, feed, sync, batch, now)
            batch = []
    if batch:
        changes += _remove_batch(s, feed, sync, batch, now)
    return changes


def _remove_batch(s: Session, feed: Feed, sync: FeedSync, skus: list[str], now: datetime) -> int:
    # A product another feed still lists stays as it is (that feed speaks for it).
    held = set(
        s.exec(
            select(FeedProduct.sku).where(
                FeedProduct.section_id == feed.section_id, FeedProduct.feed_id != feed.id,
                col(FeedProduct.sku).in_(skus), col(FeedProduct.removed_at).is_(None),
            )
        )
    )  # fmt: skip
    products = s.exec(
        select(Product).where(Product.section_id == feed.section_id, col(Product.sku).in_(skus))
    ).all()
    changes = 0
    stock: dict[str, bool | None] = {}
    for product in products:
        stock[product.sku] = product.in_stock
        if product.sku in held:
            continue
        marks = (("removed", product.attributes.get("removed"), True), ("in_stock", product.in_stock, False))
        for field, was, new in marks:
            if was != new:
                s.add(ProductChange(section_id=feed.section_id, sync_id=sync.id, sku=product.sku, field=field,
                                    old=was, new=new))  # fmt: skip
                changes += 1
        product.in_stock = False
        product.attributes = {**product.attributes, "removed": True}
        product.updated_at = now
        s.add(product)
    for sku in skus:
        s.execute(
            update(FeedProduct)
            .where(FeedProduct.feed_id == feed.id, FeedProduct.sku == sku)  # type: ignore[arg-type]
            .values(removed_at=now, last_sync_id=sync.id, stock_before=stock.get(sku))
        )
    s.flush()
    return changes
