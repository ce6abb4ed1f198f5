"""Subscriber lists synced from S3: where the list lives, its sets per generation, sync runs.

A sync bulk-loads a new *generation* of the list into a table of its own (`subscriber_set`,
named by `set_table_name`), indexes it, and then switches the list's `active_generation` in
one short transaction: readers see the old set or the new set, never a mix, and a sync that
fails half way leaves the previous set untouched. Superseded sets are dropped whole.

Why a table per generation (the one exception to "tables come from create_all"): loading
10M rows into one shared keyed table costs index maintenance per row (~2x a load into a
fresh table followed by one index build, measured), and deleting the previous 10M rows
afterwards costs as much again; a fresh table is loaded unindexed (PostgreSQL: COPY), indexed
once, and dropped in one statement. Sets keep the identifier only encrypted
(`SecretBox.seal_many`), found by its hash (the same hash `OptIn` and `UserIdentifier` use).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import lru_cache

from sqlalchemy import Column, Index, LargeBinary, MetaData, Table, Text, UniqueConstraint
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


def set_table_name(integration_id: str, generation: int) -> str:
    """The table holding one generation of a list: only [a-z0-9_], whatever the integration id."""
    return f"subscriber_set_{hashlib.sha256(integration_id.encode()).hexdigest()[:16]}_{int(generation)}"


@lru_cache(maxsize=512)
def subscriber_set(name: str) -> Table:
    """Shape of a set table: an opted-in identifier's key (the first `store.set_copy.KEY_BYTES`
    bytes of the hash used elsewhere; all 32 in sets written before) and its value sealed by `SecretBox.seal_many`,
    one row per accepted line (a value listed twice is two rows: harmless, lookups take the first).
    Own MetaData: created by the sync that loads it, never by create_all. No index here:
    `Table.create` would build it before the load; `store.subscribers.index_set` adds it after."""
    table = Table(
        name, MetaData(),
        Column("value_hash", LargeBinary, nullable=False), Column("value_enc", LargeBinary, nullable=False),
    )  # fmt: skip
    return table


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
    # running | forced (a refused folder queued to sync again, applied whatever it removes; under way like
    # running) | succeeded | failed | rejected | refused (would remove too much of the list; nothing applied)
    state: str = Field(default="running", max_length=16)
    rows_accepted: int = 0
    rows_rejected: int = 0
    lines_read: int = 0
    resume_offset: int = 0  # bytes of the file whose rows are committed (with the counters above)
    # ETag of the object those bytes were read from: a resume reads only that object (If-Match)
    source_etag: str | None = Field(default=None, max_length=200)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    duration_ms: int | None = None


SYNC_UNDER_WAY = ("running", "forced")  # states of a sync not finished yet (a run claims and resumes it)


class SubscriberRejection(SQLModel, table=True):
    """A row of an uploaded file that was not accepted, with why (the value is not repeated)."""

    sync_id: str = Field(primary_key=True, max_length=40)
    line: int = Field(primary_key=True)
    reason: str = Field(max_length=200)
