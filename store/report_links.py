"""Revoking a campaign's shared report links before they expire.

A report link (`POST /campaigns/{id}/report-link`) is a signed token that carries its campaign,
range, expiry and issue time; nothing about it is stored. Revoking therefore stores one instant
per campaign: links issued before it are refused, links issued after it work. (Rotating the
tracking secret would also end them, but with every click link of every section.)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column
from sqlmodel import Field, Session, SQLModel

from store.tables import UTCDateTime, now_utc


class ReportLinkRevocation(SQLModel, table=True):
    """The instant before which a campaign's report links were revoked (no row: none revoked)."""

    __tablename__ = "report_link_revocation"

    campaign_id: str = Field(primary_key=True, foreign_key="campaign.id", max_length=40)
    revoked_before: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


def revoke(s: Session, campaign_id: str) -> datetime:
    """Revoke every report link of the campaign issued until now; the instant is returned."""
    at = now_utc()
    row = s.get(ReportLinkRevocation, campaign_id) or ReportLinkRevocation(campaign_id=campaign_id, revoked_before=at)
    row.revoked_before = at
    s.add(row)
    s.commit()
    return at


def revoked(s: Session, campaign_id: str, issued_ms: int | None) -> bool:
    """Whether a link issued at `issued_ms` (Unix ms; None: a link from before links carried it)
    was revoked. A campaign never revoked revokes nothing."""
    row = s.get(ReportLinkRevocation, campaign_id)
    if row is None:
        return False
    return issued_ms is None or issued_ms <= int(row.revoked_before.timestamp() * 1000)
