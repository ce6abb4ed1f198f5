"""Wire contracts of the subscriber-list sync workflow and its activities (ids and counts only)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class SyncInput(BaseModel):
    section_id: str
    integration_id: str
    max_rejected_rows: int = 100_000


class ListFoldersRequest(BaseModel):
    integration_id: str


class ClaimRequest(BaseModel):
    section_id: str
    integration_id: str
    folder: str
    as_of: datetime


class Claim(BaseModel):
    sync_id: str
    generation: int
    skip: bool = False  # already synced (or being synced by another run)
    # The folder's sync was refused (it would empty most of the list) and the user asked to apply it anyway.
    force: bool = False


class SyncFolderRequest(BaseModel):
    sync_id: str
    integration_id: str
    folder: str
    generation: int
    max_rejected_rows: int
    batch_size: int = 50_000  # rows per transaction (and heartbeat)
    force: bool = False  # apply even if the file lists far fewer subscribers than the active list


class SyncProgress(BaseModel):
    """Heartbeat details: where a retried attempt resumes (byte offset of the next line)."""

    offset: int = 0
    line: int = 0  # lines consumed so far, header included
    accepted: int = 0
    rejected: int = 0


class SyncFolderResult(BaseModel):
    # refused: the file would remove more than `list_max_removal_share` of the active list (not forced)
    state: Literal["staged", "rejected", "failed", "refused"]
    rows_accepted: int = 0
    rows_rejected: int = 0
    lines_read: int = 0
    error: str | None = None


class FinishSyncRequest(BaseModel):
    sync_id: str
    result: SyncFolderResult
    as_of: datetime


class CleanupRequest(BaseModel):
    integration_id: str


class SyncSummary(BaseModel):
    folders: list[str] = Field(default_factory=list)
    states: list[str] = Field(default_factory=list)
