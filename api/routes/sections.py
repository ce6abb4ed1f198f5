"""Sections (one site or app each) and their API keys.

Creating a section needs the admin key and returns its first management and ingestion keys in
clear, once. Keys of one section never see another section's data.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlmodel import Session, select

from api import auth
from api.deps import Admin, Management, StateDep
from api.errors import NotFound
from security.api_keys import new_key
from store.engine import Store
from store.tables import ApiKey, Section, now_utc

router = APIRouter(prefix="/api/v1", tags=["sections"])


class SectionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    global_cap_messages: int | None = Field(None, ge=1, le=1000, description="Override of the global cap")


class SectionPublic(BaseModel):
    id: str
    name: str
    global_cap_messages: int | None
    created_at: datetime


class KeyCreated(BaseModel):
    id: str
    kind: str
    key: str = Field(description="Shown once; only its hash is stored")


class SectionCreated(SectionPublic):
    management_key: KeyCreated
    ingestion_key: KeyCreated


class KeyPublic(BaseModel):
    id: str
    kind: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreate(BaseModel):
    kind: Literal["ingestion", "management"]
    label: str = Field("", max_length=200)


def _issue(s: Session, section_id: str, kind: str, label: str = "") -> KeyCreated:
    k = new_key()
    s.add(
        ApiKey(id=k.key_id, section_id=section_id, kind=kind, secret_hash=k.secret_hash, label=label, created_at=now_utc())
    )
    return KeyCreated(id=k.key_id, kind=kind, key=k.plaintext)


def create_section(store: Store, body: SectionCreate) -> SectionCreated:
    with store.session() as s:
        section = Section(
            id="sec_" + secrets.token_hex(6), name=body.name, global_cap_messages=body.global_cap_messages, created_at=now_utc()
        )
        s.add(section)
        s.flush()
        mgmt = _issue(s, section.id, "management", "initial")
        ing = _issue(s, section.id, "ingestion", "initial")
        return SectionCreated(**section.model_dump(), management_key=mgmt, ingestion_key=ing)


@router.post("/sections", status_code=201)
def post_section(body: SectionCreate, _: Admin, state: StateDep) -> SectionCreated:
    return create_section(state.store, body)


@router.get("/sections")
def list_sections(_: Admin, state: StateDep) -> list[SectionPublic]:
    with state.store.session() as s:
        return [SectionPublic(**r.model_dump()) for r in s.exec(select(Section).order_by(Section.created_at)).all()]  # type: ignore[arg-type]


@router.get("/section")
def get_own_section(principal: Management, state: StateDep) -> SectionPublic:
    with state.store.session() as s:
        section = s.get(Section, principal.section_id)
        assert section is not None
        return SectionPublic(**section.model_dump())


@router.get("/keys")
def list_keys(principal: Management, state: StateDep) -> list[KeyPublic]:
    with state.store.session() as s:
        rows = s.exec(select(ApiKey).where(ApiKey.section_id == principal.section_id)).all()
        return [KeyPublic(**r.model_dump()) for r in rows]


@router.post("/keys", status_code=201)
def create_key(body: KeyCreate, principal: Management, state: StateDep) -> KeyCreated:
    with state.store.session() as s:
        return _issue(s, principal.section_id, body.kind, body.label)


@router.delete("/keys/{key_id}", status_code=204)
def revoke_key(key_id: str, principal: Management, state: StateDep) -> None:
    with state.store.session() as s:
        row = s.get(ApiKey, key_id)
        if row is None or row.section_id != principal.section_id:
            raise NotFound("no such key", field="key_id")
        row.revoked_at = row.revoked_at or now_utc()
        s.add(row)
    auth.forget_key(key_id)
