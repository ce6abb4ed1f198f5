"""Loading what recommendation strategies need: recent activity and candidate products."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, String, cast, or_
from sqlmodel import Session, col, select

from domain import recommend
from domain.matching import product_record
from store.tables import Event, Product

LOOKBACK = timedelta(days=30)
MAX_EVENTS = 5000  # most recent activity considered; bounds the cost per send
MAX_CANDIDATES = 2000


def _event_skus(data: Mapping[str, Any]) -> list[str]:
    skus = [str(i.get("productId")) for i in data.get("cart") or [] if isinstance(i, dict) and i.get("productId")]
    if data.get("sku"):
        skus.append(str(data["sku"]))
    return list(dict.fromkeys(skus))


def load(
    s: Session, section_id: str, trigger: Sequence[dict[str, Any]], as_of: datetime, strategies: set[str], limit: int = 20
) -> dict[str, list[dict[str, Any]]]:
    rows = s.exec(
        select(Event.kind, Event.data)
        .where(Event.section_id == section_id, col(Event.kind).in_(list(recommend.WEIGHTS)),
               Event.received_at >= as_of - LOOKBACK, Event.received_at <= as_of)  # fmt: skip
        .order_by(col(Event.received_at).desc())
        .limit(MAX_EVENTS)
    ).all()
    score = recommend.popularity((kind, _event_skus(data)) for kind, data in rows)
    exclude = {str(i.get("sku")) for i in trigger}
    categories = sorted({c for i in trigger for c in (i.get("categories") or [])})
    q = select(Product).where(Product.section_id == section_id)
    skus = set(score)
    conds: list[ColumnElement[bool]] = [col(Product.sku).in_(list(skus)[:MAX_CANDIDATES])] if skus else []
    if "similar" in strategies and categories:
        # JSON containment differs per database; fetch a bounded candidate set and filter in Python.
        conds.append(or_(*[cast(Product.categories, String).contains(f'"{c}"') for c in categories[:20]]))
    if not conds:
        return {}
    products = s.exec(q.where(or_(*conds)).limit(MAX_CANDIDATES)).all()
    catalog = {p.sku: p.model_dump(exclude={"section_id", "updated_at"}) for p in products}
    out: dict[str, list[str]] = {}
    if "popular" in strategies:
        out["popular"] = recommend.popular(score, catalog, exclude, limit)
    if "similar" in strategies:
        out["similar"] = recommend.similar(score, catalog, trigger, exclude, limit)
    return {k: [_public(product_record(sku, catalog)) for sku in v] for k, v in out.items()}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "category"}
