"""Batched campaign runs: one run per (campaign, trigger) with its recipients and progress.

Feed-driven and scheduled campaigns can hit a million users, far beyond one workflow per
recipient. A run lists its recipients here; a workflow drives batched delivery activities
over them. Each recipient row moves pending -> sent | skipped | failed exactly once, and the
send itself is keyed `run:user`, so a retried batch never messages anyone twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from store.tables import UTCDateTime


class BroadcastRun(SQLModel, table=True):
    __table_args__ = (Index("ix_broadcast_campaign", "campaign_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(max_length=40)
    campaign_id: str = Field(max_length=40)
    campaign_version: int
    reason: str = Field(max_length=200)  # what started it: a feed sync, a schedule
    source_id: str | None = Field(default=None, max_length=40)  # the feed sync id, if any
    # preparing | waiting | sending | done; superseded | cancelled: a scheduled run ended unsent when it
    # woke (its slot moved by an edit, its campaign paused: activities/broadcast.py::off_schedule)
    state: str = Field(default="preparing", max_length=16)
    send_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    total: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    deferred: int = 0  # waiting for the recipient's send window
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class BroadcastRecipient(SQLModel, table=True):
    __table_args__ = (Index("ix_broadcast_pending", "run_id", "status", "shard", "user_id"),)

    run_id: str = Field(primary_key=True, max_length=40)
    user_id: str = Field(primary_key=True, max_length=40)
    shard: int = 0
    status: str = Field(default="pending", max_length=16)  # pending | sent | skipped | failed
    reason: str | None = Field(default=None, max_length=200)
    not_before: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    channel: str | None = Field(default=None, max_length=16)
    items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    provider_response: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
