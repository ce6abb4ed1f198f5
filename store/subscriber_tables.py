"""Subscriber lists synced from S3: where the list lives, its entries per generation, sync runs.

A sync writes a new *generation* of entries next to the active one and then switches the
list's `active_generation` in one short transaction: readers see the old set or the new set,
never a mix, and a sync that fails half way leaves the previous set untouched. Entries keep
the identifier only encrypted, keyed by its hash (the same hash `OptIn` and `UserIdentifier` use).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from store.tables import UTCDateTime


class SubscriberList(SQLModel, table=True):
    """One subscriber list per channel integration: its S3 location, credentials and active set."""

    integration_id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(index=True, max_length=40)
    channel: str = Field(max_length=16)
    bucket: str = Field(max_length=63)
    prefix: str = Field(max_length=300)  # ends with "/"
    iam_user: str = Field(max_length=64)
    access_key_id: str | None = Field(default=None, max_length=128)  # the secret is shown once, never kept
    credentials_issued: int = 0  # first issue + at most one regeneration
    active_generation: int | None = None
    activated_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    next_generation: int = 1
    last_folder: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class SubscriberEntry(SQLModel, table=True):
    """An opted-in identifier in one generation of a list."""

    integration_id: str = Field(primary_key=True, max_length=40)
    generation: int = Field(primary_key=True)
    value_hash: str = Field(primary_key=True, max_length=64)
    value_enc: str = Field(sa_column=Column(Text, nullable=False))


class SubscriberSync(SQLModel, table=True):
    """One sync of one upload folder: progress while running, the outcome after."""

    __table_args__ = (
        UniqueConstraint("integration_id", "folder"),
        Index("ix_subscriber_sync_recent", "integration_id", "started_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    integration_id: str = Field(max_length=40)
    section_id: str = Field(max_length=40)
    folder: str = Field(max_length=64)
    generation: int
    state: str = Field(default="running", max_length=16)  # running | succeeded | failed | rejected
    rows_accepted: int = 0
    rows_rejected: int = 0
    lines_read: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    duration_ms: int | None = None


class SubscriberRejection(SQLModel, table=True):
    """A row of an uploaded file that was not accepted, with why (the value is not repeated)."""

    sync_id: str = Field(primary_key=True, max_length=40)
    line: int = Field(primary_key=True)
    reason: str = Field(max_length=200)
