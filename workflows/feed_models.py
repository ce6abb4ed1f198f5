"""Wire contracts of feed syncs and batched campaign runs (ids, counts and times only)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from workflows.subscriber_models import SyncProgress


class FeedSyncInput(BaseModel):
    section_id: str
    feed_id: str
    object_key: str | None = None  # an uploaded file; None: the feed's own URL / S3 location
    max_rejected_rows: int = 100_000
    force: bool = False  # apply a full file even if it removes more than the allowed share
    # Read a URL's file whole even if unchanged since the last applied sync (no conditional GET).
    refetch: bool = False
    # Shards of the runs the sync triggers (REJOIN_BROADCAST_SHARDS when the API started it);
    # syncs started before the field existed replay with their count then: 2.
    shards: int = 2


class FeedBeginRequest(BaseModel):
    sync_id: str
    feed_id: str
    object_key: str | None = None
    as_of: datetime


class FeedBegun(BaseModel):
    # Why the sync ends at once, having read nothing (another sync of the feed is running), or None.
    # Syncs begun before `feeds.begin` answered replay its None: they go on.
    skipped: str | None = None


class FeedStageRequest(BaseModel):
    sync_id: str
    feed_id: str
    max_rejected_rows: int
    batch_size: int = 1000
    refetch: bool = False  # no conditional GET (FeedSyncInput.refetch)


class FeedProgress(SyncProgress):
    header: list[str] = Field(default_factory=list)
    # The source version (FeedSync.source_etag) the offset belongs to: a heartbeat of another version
    # (the file was replaced since) is not resumed from. Heartbeat details only: no workflow reads it.
    etag: str | None = None
    # The first keys seen twice (a later row replaced an earlier one), kept across a resumed attempt.
    duplicate_keys: list[str] = Field(default_factory=list)


class FeedStageResult(BaseModel):
    # unchanged: the URL answered 304 to the conditional GET (the file the last applied sync read);
    # refused: the feed's S3 location is not one its section may read (nothing was read)
    state: Literal["staged", "rejected", "failed", "unchanged", "refused"]
    rows_accepted: int = 0
    rows_rejected: int = 0
    lines_read: int = 0
    error: str | None = None
    duplicates: int = 0  # accepted rows replaced by a later row of the same key (the last row wins)
    duplicate_keys: list[str] = Field(default_factory=list)  # the first few of those keys


class FeedFinishRequest(BaseModel):
    sync_id: str
    result: FeedStageResult
    as_of: datetime
    force: bool = False


class FeedApplied(BaseModel):
    state: str = "succeeded"  # | refused (a full file removing too much, not forced)
    changes: int = 0
    removed: int = 0


class FeedSyncSummary(BaseModel):
    sync_id: str
    state: str
    changes: int = 0
    removed: int = 0
    duplicates: int = 0  # rows of the file replaced by a later row with the same key
    runs: list[str] = Field(default_factory=list)
    error: str | None = None  # why a `skipped` sync read nothing


# ---------------------------------------------------------------- batched campaign runs


class PlanRunsRequest(BaseModel):
    """Create the runs a feed sync triggers (or one scheduled run) with their recipients."""

    section_id: str
    as_of: datetime
    sync_id: str | None = None  # feed-driven
    campaign_id: str | None = None  # scheduled: this campaign only
    shards: int = 2


class PlannedRun(BaseModel):
    run_id: str
    campaign_id: str
    send_at: datetime | None = None


class BroadcastInput(BaseModel):
    run_id: str
    section_id: str
    campaign_id: str
    send_at: datetime | None = None
    shards: int = 2
    batch_size: int = 200
    plan_scheduled: bool = False  # a scheduled run lists its audience when it starts
    # A `campaign_stopped` signal the run had received before it continued as new (workflows/broadcast.py):
    # the next run's batches end it too, even if the campaign is active again by then.
    campaign_stopped: str | None = None


class ScheduledFireInput(BaseModel):
    """What a recurring campaign's Temporal Schedule starts at each fire time."""

    section_id: str
    campaign_id: str
    fire_time: datetime | None = None  # None: the schedule's nominal time (TemporalScheduledStartTime)
    shards: int = 2


class FireRequest(BaseModel):
    section_id: str
    campaign_id: str
    fire_time: datetime
    as_of: datetime


class BatchRequest(BaseModel):
    run_id: str
    shard: int
    shards: int = 1  # the run's rate limit is shared by its shards
    as_of: datetime
    limit: int = 200
    # The campaign's pause or archive, signalled to the run (workflows/broadcast.py `campaign_stopped`):
    # the batch skips the rest of its shard, whatever the campaign's status now.
    campaign_stopped: str | None = None


class BatchResult(BaseModel):
    processed: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    deferred: int = 0
    more_due: bool = False  # pending recipients due now remain
    next_due: datetime | None = None  # earliest deferred recipient (send window)
    # The run's totals after this batch (from the store: they include work of failed attempts).
    run_sent: int = 0
    run_skipped: int = 0
    run_failed: int = 0


class RunProgress(BaseModel):
    run_id: str
    state: str = "waiting"
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    batches: int = 0
