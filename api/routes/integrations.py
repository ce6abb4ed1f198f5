"""Channel integrations (one per channel per section): the provider each channel sends through."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, HttpUrl, model_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from api.deps import Management, StateDep
from api.errors import Conflict, NotFound
from domain.campaign import Channel
from store.tables import Integration, now_utc

router = APIRouter(prefix="/api/v1/integrations", tags=["integrations"])


class CustomHttpConfig(BaseModel):
    url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    # The provider's rate limit; batched campaign runs never call faster (journeys are per user).
    rate_limit_per_second: float | None = Field(None, gt=0, le=100_000)


class IntegrationCreate(BaseModel):
    channel: Channel
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["outbox", "custom_http"]
    identifier_type: Literal["email", "phone", "custom"] = "email"
    config: CustomHttpConfig | None = None

    @model_validator(mode="after")
    def _config_for_kind(self) -> IntegrationCreate:
        if self.kind == "custom_http" and self.config is None:
            raise ValueError("config.url is required for a custom_http integration")
        return self


class IntegrationPublic(BaseModel):
    id: str
    channel: str
    name: str
    kind: str
    identifier_type: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@router.post("", status_code=201)
def create(body: IntegrationCreate, principal: Management, state: StateDep) -> IntegrationPublic:
    now = now_utc()
    row = Integration(
        id="int_" + secrets.token_hex(6),
        section_id=principal.section_id,
        channel=body.channel.value,
        name=body.name,
        kind=body.kind,
        identifier_type=body.identifier_type,
        config=body.config.model_dump(mode="json") if body.config else {},
        created_at=now,
        updated_at=now,
    )
    try:
        with state.store.session() as s:
            s.add(row)
    except IntegrityError:
        raise Conflict(f"the section already has a {body.channel.value} integration", field="channel") from None
    return IntegrationPublic(**row.model_dump())


@router.get("")
def list_integrations(principal: Management, state: StateDep) -> list[IntegrationPublic]:
    with state.store.session() as s:
        rows = s.exec(select(Integration).where(Integration.section_id == principal.section_id)).all()
        return [IntegrationPublic(**r.model_dump()) for r in rows]


@router.delete("/{integration_id}", status_code=204)
def delete(integration_id: str, principal: Management, state: StateDep) -> None:
    with state.store.session() as s:
        row = s.get(Integration, integration_id)
        if row is None or row.section_id != principal.section_id:
            raise NotFound("no such integration", field="integration_id")
        s.delete(row)
