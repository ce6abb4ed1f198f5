"""A section's link settings: fallback URL for dead links, legacy-link domains and section id."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session, select

from store.tables import Section, now_utc
from store.tracking_tables import SectionLinks


@dataclass(frozen=True)
class LinkSettings:
    fallback_url: str | None = None
    link_domains: list[str] = field(default_factory=list)
    legacy_section_id: str | None = None


def get(s: Session, section_id: str) -> LinkSettings:
    row = s.get(SectionLinks, section_id) if section_id else None
    if row is None:
        return LinkSettings()
    return LinkSettings(row.fallback_url, list(row.link_domains), row.legacy_section_id)


def legacy_owner(s: Session, sec: str) -> str | None:
    """The section a legacy link's `sec=` names: a Rejoin section id or a section's former Reconnect id."""
    if not sec:
        return None
    if s.get(Section, sec) is not None:
        return sec
    row = s.exec(select(SectionLinks).where(SectionLinks.legacy_section_id == sec)).first()
    return row.section_id if row is not None else None


def legacy_id_taken(s: Session, section_id: str, legacy_section_id: str) -> bool:
    """Another section already answers to this former Reconnect id (it must name one section)."""
    row = s.exec(select(SectionLinks).where(SectionLinks.legacy_section_id == legacy_section_id)).first()
    return (row is not None and row.section_id != section_id) or (
        legacy_section_id != section_id and s.get(Section, legacy_section_id) is not None
    )


def save(s: Session, section_id: str, settings: LinkSettings) -> None:
    row = s.get(SectionLinks, section_id) or SectionLinks(section_id=section_id, updated_at=now_utc())
    row.fallback_url = settings.fallback_url
    row.link_domains = list(settings.link_domains)
    row.legacy_section_id = settings.legacy_section_id
    row.updated_at = now_utc()
    s.add(row)
