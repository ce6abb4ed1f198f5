"""Products (the catalog trigger conditions and messages read) and the local outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.deps import Management, StateDep
from api.errors import NotFound
from store.tables import OutboxMessage, Product, now_utc

router = APIRouter(prefix="/api/v1", tags=["catalog"])

# Outbox ids are PostgreSQL INTEGER: a larger `after_id` failed in the database (a 500), not as a 422.
MAX_OUTBOX_ID = 2**31 - 1


class ProductIn(BaseModel):
    sku: str = Field(min_length=1, max_length=256)
    name: str | None = Field(None, max_length=1000)
    url: str | None = Field(None, max_length=4096)
    image_url: str | None = Field(None, max_length=4096)
    price: float | None = Field(None, ge=0)
    in_stock: bool | None = None
    categories: list[str] = Field(default_factory=list, max_length=50)
    attributes: dict[str, Any] = Field(default_factory=dict, max_length=200)


class Upserted(BaseModel):
    upserted: int


@router.put("/products")
def upsert_products(
    body: Annotated[list[ProductIn], Body(max_length=1000)], principal: Management, state: StateDep
) -> Upserted:
    now = now_utc()
    with state.store.session() as s:
        for p in body:
            s.merge(Product(section_id=principal.section_id, updated_at=now, **p.model_dump()))
    return Upserted(upserted=len(body))


@router.get("/products/{sku}")
def get_product(sku: str, principal: Management, state: StateDep) -> ProductIn:
    with state.store.session() as s:
        row = s.get(Product, (principal.section_id, sku))
        if row is None:
            raise NotFound("no such product", field="sku")
        return ProductIn(**row.model_dump())


class OutboxItem(BaseModel):
    id: int
    channel: str
    recipient: str
    payload: dict[str, Any]
    send_key: str
    created_at: datetime


@router.get("/outbox")
def list_outbox(
    principal: Management,
    state: StateDep,
    channel: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    after_id: int = Query(0, ge=0, le=MAX_OUTBOX_ID),
) -> list[OutboxItem]:
    """Messages the built-in outbox provider "delivered", oldest first (page with after_id)."""
    with state.store.session() as s:
        q = select(OutboxMessage).where(OutboxMessage.section_id == principal.section_id, col(OutboxMessage.id) > after_id)
        if channel:
            q = q.where(OutboxMessage.channel == channel)
        rows = s.exec(q.order_by(col(OutboxMessage.id)).limit(limit)).all()
        return [OutboxItem(**r.model_dump()) for r in rows]
