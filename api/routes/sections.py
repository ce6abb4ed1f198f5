"""Sections (one site or app each) and their API keys.

Creating a section needs the admin key and returns its first management and ingestion keys in
clear, once. Keys of one section never see another section's data.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, select

from api import auth
from api.deps import Admin, Management, StateDep
from api.errors import Conflict, NotFound
from domain.tracking import link_domain_problem, safe_target, valid_domain
from security.api_keys import new_key
from store import reports as report_store
from store import section_links
from store.engine import Store
from store.section_links import LinkSettings
from store.tables import ApiKey, Section, now_utc

router = APIRouter(prefix="/api/v1", tags=["sections"])


class SectionLinksIn(BaseModel):
    """Link settings of a section (docs/messages.md, Tracking)."""

    fallback_url: str | None = Field(
        None, max_length=2048, description="Where expired, tampered or unknown tracking links go (else a neutral page)"
    )
    link_domains: list[str] | None = Field(
        None, max_length=50, description="Hosts (and subdomains) legacy `tremclk` links may redirect to"
    )
    legacy_section_id: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="`sec=` of legacy links"
    )

    @field_validator("fallback_url")
    @classmethod
    def _fallback(cls, v: str | None) -> str | None:
        if v is not None and not safe_target(v):
            raise ValueError("must be an absolute http(s) URL without credentials")
        return v

    @field_validator("link_domains")
    @classmethod
    def _domains(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out: list[str] = []
        for d in v:
            d = d.strip().rstrip(".").lower()
            if not valid_domain(d):
                raise ValueError(f"'{d[:100]}' is not a host name (write shop.example: no scheme, port or path)")
            # A public suffix or an IP would make unsigned legacy links an open redirect.
            if (problem := link_domain_problem(d)) is not None:
                raise ValueError(f"'{d}' {problem}")
            if d not in out:
                out.append(d)
        return out


class SectionCreate(SectionLinksIn):
    name: str = Field(min_length=1, max_length=200)
    global_cap_messages: int | None = Field(None, ge=1, le=1000, description="Override of the global cap")


class SectionPatch(SectionLinksIn):
    # A misspelt or unsupported field is a 422 naming it, not a 200 that changed nothing.
    model_config = ConfigDict(extra="forbid")

    global_cap_messages: int | None = Field(
        None, ge=1, le=1000, description="Override of the global cap; null: the deployment's REJOIN_GLOBAL_CAP_MESSAGES"
    )
    currency: str | None = Field(
        None,
        description="ISO 4217 code revenue is reported in (docs/reports.md); null: every purchase's value adds up",
    )

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str | None) -> str | None:
        # Three letters is all Rejoin can check offline (no list of codes, no exchange rates).
        if v is None:
            return None
        code = v.strip().upper()
        if len(code) != 3 or not code.isascii() or not code.isalpha():
            raise ValueError("must be an ISO 4217 currency code: three letters, such as EUR")
        return code


class SectionPublic(BaseModel):
    id: str
    name: str
    global_cap_messages: int | None
    created_at: datetime
    fallback_url: str | None = None
    link_domains: list[str] = Field(default_factory=list)
    legacy_section_id: str | None = None
    currency: str | None = None  # the report currency (PATCH /section)


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


def _public(s: Session, section: Section) -> SectionPublic:
    links = section_links.get(s, section.id)
    currency = report_store.report_currency(s, section.id)
    return SectionPublic(**section.model_dump(), **asdict(links), currency=currency)


def _set_links(s: Session, section_id: str, body: SectionLinksIn) -> None:
    """Apply the link fields the request names (an explicit null clears one)."""
    given = body.model_fields_set & {"fallback_url", "link_domains", "legacy_section_id"}
    if not given:
        return
    old = section_links.get(s, section_id)
    new = LinkSettings(
        fallback_url=body.fallback_url if "fallback_url" in given else old.fallback_url,
        link_domains=(body.link_domains or []) if "link_domains" in given else old.link_domains,
        legacy_section_id=body.legacy_section_id if "legacy_section_id" in given else old.legacy_section_id,
    )
    if new.legacy_section_id and section_links.legacy_id_taken(s, section_id, new.legacy_section_id):
        raise Conflict("another section already uses this legacy section id", field="legacy_section_id")
    section_links.save(s, section_id, new)


def create_section(store: Store, body: SectionCreate) -> SectionCreated:
    with store.session() as s:
        section = Section(
            id="sec_" + secrets.token_hex(6), name=body.name, global_cap_messages=body.global_cap_messages, created_at=now_utc()
        )
        s.add(section)
        s.flush()
        _set_links(s, section.id, body)
        mgmt = _issue(s, section.id, "management", "initial")
        ing = _issue(s, section.id, "ingestion", "initial")
        return SectionCreated(**_public(s, section).model_dump(), management_key=mgmt, ingestion_key=ing)


@router.post("/sections", status_code=201)
def post_section(body: SectionCreate, _: Admin, state: StateDep) -> SectionCreated:
    return create_section(state.store, body)


@router.get("/sections")
def list_sections(_: Admin, state: StateDep) -> list[SectionPublic]:
    with state.store.session() as s:
        return [_public(s, r) for r in s.exec(select(Section).order_by(Section.created_at)).all()]  # type: ignore[arg-type]


@router.get("/section")
def get_own_section(principal: Management, state: StateDep) -> SectionPublic:
    with state.store.session() as s:
        section = s.get(Section, principal.section_id)
        assert section is not None
        return _public(s, section)


@router.patch("/section")
def patch_own_section(body: SectionPatch, principal: Management, state: StateDep) -> SectionPublic:
    """Change the section's link settings, global cap and report currency; fields left out keep
    their value, null clears one. The next send decision reads the new cap, the next report the
    new currency (purchases already attributed included)."""
    with state.store.session() as s:
        section = s.get(Section, principal.section_id)
        assert section is not None
        _set_links(s, section.id, body)
        if "global_cap_messages" in body.model_fields_set:
            section.global_cap_messages = body.global_cap_messages
            s.add(section)
        if "currency" in body.model_fields_set:
            report_store.save_report_currency(s, section.id, body.currency)
        s.flush()
        return _public(s, section)


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
