"""Tables for messages and tracking: saved templates, short links, clicks and impressions.

`TrackingHit` keeps every hit, bots included (flagged with the reason), so filtering can be
audited; reports count only `bot = false`. Campaign, variation, step and channel are copied
from the send at hit time so report queries never join the send table for them.

`first_of_send` marks the first human hit of each kind (impression, click) on a send, set when
the hit is recorded (store/report_rollup.py, `count_hit`): reports count opens and clicks per
send (a send opened ten times is one open) by counting flagged rows, never with a
COUNT(DISTINCT send_key) over millions of hits. A unique partial index keeps it to one row per
(send, kind) even when two hits of a send arrive at once.

A human click on an email send with no open yet implies one: a row of source `implied` (the
click's time, no user agent) is recorded with it as the send's first open, so every path that
counts flagged rows counts it, and a real open afterwards is a repeat, not a second open.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, ColumnElement, Index, Text, text
from sqlmodel import Field, SQLModel, col

from store.tables import Journey, Send, UTCDateTime


class MessageTemplate(SQLModel, table=True):
    """A reusable message payload template, referenced from campaign messages by id."""

    id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(index=True, foreign_key="section.id", max_length=40)
    name: str = Field(max_length=200)
    channel: str | None = Field(default=None, max_length=16)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    variables: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class ShortLink(SQLModel, table=True):
    """An SMS short code -> the send it belongs to and where it goes."""

    code: str = Field(primary_key=True, max_length=32)
    section_id: str = Field(max_length=40)
    send_key: str = Field(max_length=300)
    user_id: str = Field(max_length=40)
    target: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class SectionLinks(SQLModel, table=True):
    """A section's link settings (optional; no row = none set).

    A table of its own rather than columns on `section`: tables are created with create_all and
    existing tables are never altered, so new columns would not reach existing databases.
    """

    section_id: str = Field(primary_key=True, foreign_key="section.id", max_length=40)
    # Where dead links (expired, tampered, unknown) go; None: a neutral "link expired" page.
    fallback_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Hosts (and their subdomains) that unsigned legacy `tremclk` links may redirect to.
    link_domains: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The section's former Reconnect section id (`sec=` of legacy links), unique across sections.
    legacy_section_id: str | None = Field(default=None, max_length=64, unique=True)
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class TrackingHit(SQLModel, table=True):
    """One click or impression on a tracked message."""

    __table_args__ = (
        Index("ix_hit_campaign", "campaign_id", "kind", "bot", "at"),
        Index("ix_hit_user", "section_id", "user_id", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    section_id: str = Field(max_length=40)
    campaign_id: str = Field(max_length=40)
    variation_id: str = Field(max_length=64)
    step_index: int
    channel: str = Field(max_length=16)
    send_key: str = Field(max_length=300)
    user_id: str = Field(max_length=40)
    kind: str = Field(max_length=16)  # click | impression
    source: str = Field(max_length=16)  # link | short | pixel | push | legacy | implied (an open a click implies)
    bot: bool = False
    bot_reason: str | None = Field(default=None, max_length=32)
    # The first human hit of this kind on the send: what reports count as its open / click. A
    # server default, so rows inserted without it (and rows stored before it) start as false;
    # those are flagged once at start-up (store/report_rollup.py, `migrate_reports`).
    first_of_send: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )
    target: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    user_agent: str | None = Field(default=None, max_length=500)
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


# At most one first human hit per (send, kind), also the index the first-hit check reads; partial
# (flagged rows only, so small). Its predicate has the form the queries use (FIRST_OF_SEND), so
# planners match it.
FIRST_OF_SEND: ColumnElement[bool] = col(TrackingHit.first_of_send) == True  # noqa: E712
Index(
    "ux_hit_send_first", TrackingHit.send_key, TrackingHit.kind,
    unique=True, postgresql_where=FIRST_OF_SEND, sqlite_where=FIRST_OF_SEND,
)  # fmt: skip
# Report indexes on the engine's tables, declared here so store/tables.py stays untouched.
# Allocation: first trigger per (campaign, user); sends per (campaign, time); purchases per user.
Index("ix_journey_campaign_user", Journey.campaign_id, Journey.user_id, Journey.triggered_at)  # type: ignore[arg-type]
Index("ix_send_campaign_status", Send.campaign_id, Send.status, Send.created_at)  # type: ignore[arg-type]
