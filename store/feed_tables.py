"""Feeds (product catalog, user data): definitions, sync runs, staged rows, detected changes.

A sync streams the CSV into `FeedStage` (keyed by sync and row key), then applies it to
`Product` / `User` in one transaction, writing every changed value with its previous value
(`ProductChange`, `UserAttributeChange`). Those change rows are what Price Drop and the
attribute-change campaigns trigger on; a failed sync stages nothing visible and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from store.tables import UTCDateTime


class Feed(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(index=True, max_length=40)
    kind: str = Field(max_length=16)  # product | user
    name: str = Field(max_length=200)
    source: str = Field(max_length=16)  # upload | url | s3
    url: str | None = Field(default=None, max_length=4096)
    s3_bucket: str | None = Field(default=None, max_length=63)
    s3_key: str | None = Field(default=None, max_length=1024)
    sync_every_seconds: int | None = None  # None: on demand only
    # full: every file lists the whole catalogue (products it leaves out are removed);
    # delta: files list changed products only (nothing is removed).
    mode: str = Field(default="full", max_length=8)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


# Bump when the rows of an unchanged file would be read or applied differently (domain/feeds.py parsing,
# the apply's rules): a sync after the upgrade then reads the file whole instead of trusting a 304.
READ_RULES = 1


def read_config(feed: Feed) -> str:
    """What decides how a feed's file is fetched, read and applied (not its name or schedule), as a short
    digest. A sync records it (`FeedSync.feed_config`); a URL sync skips a file unchanged since the last
    applied sync (conditional GET) only if the feed still reads as that sync did. A field added to `Feed`
    that changes how rows are read or applied belongs here."""
    config = [READ_RULES, feed.kind, feed.source, feed.url, feed.s3_bucket, feed.s3_key, feed.mode]
    return hashlib.sha256(json.dumps(config).encode()).hexdigest()[:32]


class FeedSync(SQLModel, table=True):
    __table_args__ = (Index("ix_feed_sync_recent", "feed_id", "started_at"),)

    id: str = Field(primary_key=True, max_length=40)
    feed_id: str = Field(max_length=40)
    section_id: str = Field(max_length=40)
    object_key: str | None = Field(default=None, max_length=1024)  # uploads: where the file is
    # running | succeeded | failed | rejected | refused | unchanged (a URL's file not modified since the
    # last succeeded sync: a 304 to the conditional GET, nothing staged or applied) | skipped (begun while
    # another sync of the feed ran: nothing read, `error` names that sync; activities/feed_overlap.py)
    state: str = Field(default="running", max_length=16)
    # The workflow run that drives the sync (None: begun before they were kept): a `running` row whose
    # run is known to have ended (terminated, timed out) is ended `failed` by the feed's next sync.
    workflow_id: str | None = Field(default=None, max_length=255)
    workflow_run_id: str | None = Field(default=None, max_length=64)
    rows_accepted: int = 0
    rows_rejected: int = 0
    lines_read: int = 0
    changes: int = 0
    removed: int = 0  # products of the feed the file no longer lists (full feeds)
    # Rows replaced by a later row with the same SKU / CUID in the file (the last row wins), and the
    # first few of those keys: shown with the sync so a duplicate in an export is not silent.
    duplicates: int = 0
    duplicate_keys: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # Version of the URL / S3 file the staged rows were read from (S3 ETag; a URL's strong ETag, else its
    # Last-Modified): a resumed read only continues that version, so two files are never spliced.
    source_etag: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # `read_config` of the feed when the sync began (None: a sync begun before it was kept, never
    # the reference of a conditional GET).
    feed_config: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    duration_ms: int | None = None


class FeedRejection(SQLModel, table=True):
    sync_id: str = Field(primary_key=True, max_length=40)
    line: int = Field(primary_key=True)
    reason: str = Field(max_length=200)


class FeedStage(SQLModel, table=True):
    """A parsed row waiting for the apply step (sku for products, CUID for users)."""

    sync_id: str = Field(primary_key=True, max_length=40)
    key: str = Field(primary_key=True, max_length=256)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class ProductChange(SQLModel, table=True):
    __table_args__ = (Index("ix_product_change_sync", "sync_id", "field"),)

    id: int | None = Field(default=None, primary_key=True)
    section_id: str = Field(max_length=40)
    sync_id: str = Field(max_length=40)
    sku: str = Field(max_length=256)
    field: str = Field(max_length=200)
    old: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    new: Any = Field(default=None, sa_column=Column(JSON, nullable=True))


class UserAttributeChange(SQLModel, table=True):
    __table_args__ = (Index("ix_user_change_sync", "sync_id", "attribute"),)

    id: int | None = Field(default=None, primary_key=True)
    section_id: str = Field(max_length=40)
    sync_id: str = Field(max_length=40)
    user_id: str = Field(max_length=40)
    attribute: str = Field(max_length=200)
    old: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    new: Any = Field(default=None, sa_column=Column(JSON, nullable=True))


class FeedProduct(SQLModel, table=True):
    """Which products a feed lists: a full file that leaves one out removes it (`removed_at`).

    Only products a feed brought are ever removed by it (not those of another feed or of the
    catalog API). `stock_before` keeps `in_stock` as it was at removal, restored when a later
    file lists the product again without an `in_stock` column.
    """

    __table_args__ = (Index("ix_feed_product_sku", "section_id", "sku"),)

    feed_id: str = Field(primary_key=True, max_length=40)
    sku: str = Field(primary_key=True, max_length=256)
    section_id: str = Field(max_length=40)
    last_sync_id: str = Field(max_length=40)
    removed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    stock_before: bool | None = None
