"""Subscriber-list sync activities: list upload folders, claim one, stream its file, switch.

`sync_folder` streams `data.csv` from S3 in chunks (the file is never held in memory), writes
accepted values into a new list generation and rejected lines into the sync's report, one
short transaction per batch, and heartbeats the byte offset after each batch. A retried
attempt resumes at that offset with a ranged GET; a batch written but not yet heartbeated is
written again harmlessly (inserts ignore existing rows). Nothing becomes visible to send
decisions until `finish` switches the list's active generation in one transaction.
"""

from __future__ import annotations

import csv
import logging
import secrets
from typing import Any

from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.streams import CHUNK, cells, lines_from
from domain import subscribers as rules
from security.crypto import SecretBox
from settings import Settings
from store import objects
from store import subscribers as lists
from store.engine import Store
from store.subscriber_tables import SubscriberList, SubscriberSync
from store.tables import Integration, now_utc
from workflows.subscriber_models import (
    Claim,
    ClaimRequest,
    CleanupRequest,
    FinishSyncRequest,
    ListFoldersRequest,
    SyncFolderRequest,
    SyncFolderResult,
    SyncProgress,
)

log = logging.getLogger(__name__)
CLEANUP_BATCH = 5000


class SubscriberActivities:
    def __init__(self, store: Store, settings: Settings, box: SecretBox) -> None:
        self.store = store
        self.settings = settings
        self.box = box

    def _list(self, integration_id: str) -> tuple[SubscriberList, Integration]:
        with self.store.session() as s:
            lst = s.get(SubscriberList, integration_id)
            integration = s.get(Integration, integration_id)
        if lst is None or integration is None:
            raise ApplicationError(
                "subscriber list not provisioned", type="NotProvisioned", non_retryable=True
            )
        return lst, integration

    @activity.defn(name="subscribers.list_folders")
    def list_folders(self, req: ListFoldersRequest) -> list[str]:
        """Upload folders holding a data.csv that have not been synced yet, oldest first."""
        lst, _ = self._list(req.integration_id)
        s3 = objects.client(self.settings)
        found: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=lst.bucket, Prefix=lst.prefix, Delimiter="/"
        ):
            for p in page.get("CommonPrefixes", []):
                name = p["Prefix"][len(lst.prefix) :].rstrip("/")
                if rules.FOLDER.match(name) and (lst.last_folder is None or name > lst.last_folder):
                    found.append(name)
        with self.store.session() as s:
            done = set(
                s.exec(
                    select(SubscriberSync.folder).where(
                        SubscriberSync.integration_id == req.integration_id, SubscriberSync.state != "running"
                    )
                ).all()
            )
        ready: list[str] = []
        for name in sorted(found):
            if name in done:
                continue
            try:
                s3.head_object(Bucket=lst.bucket, Key=f"{lst.prefix}{name}/{rules.FILE_NAME}")
            except s3.exceptions.ClientError:
                continue  # still uploading (or misplaced): picked up by a later run
            ready.append(name)
        return ready

    @activity.defn(name="subscribers.claim")
    def claim(self, req: ClaimRequest) -> Claim:
        """Create the sync record of a folder (or find the unfinished one to resume)."""
        with self.store.session() as s:
            lst = s.get(SubscriberList, req.integration_id)
            assert lst is not None
            row = s.exec(
                select(SubscriberSync).where(
                    SubscriberSync.integration_id == req.integration_id, SubscriberSync.folder == req.folder
                )
            ).first()
            if row is not None:
                return Claim(sync_id=row.id, generation=row.generation, skip=row.state != "running")
            if lst.last_folder is not None and req.folder <= lst.last_folder:
                return Claim(sync_id="", generation=0, skip=True)
            row = SubscriberSync(
                id="sync_" + secrets.token_hex(8),
                integration_id=req.integration_id,
                section_id=req.section_id,
                folder=req.folder,
                generation=lst.next_generation,
                started_at=req.as_of,
            )
            lst.next_generation += 1
            s.add(lst)
            s.add(row)
            return Claim(sync_id=row.id, generation=row.generation)

    @activity.defn(name="subscribers.sync_folder")
    def sync_folder(self, req: SyncFolderRequest) -> SyncFolderResult:
        lst, integration = self._list(req.integration_id)
        details = activity.info().heartbeat_details
        progress = SyncProgress.model_validate(details[0]) if details else SyncProgress()
        if progress.line:
            log.info("sync %s resuming at line %d (byte %d)", req.sync_id, progress.line, progress.offset)
        s3 = objects.client(self.settings)
        key = f"{lst.prefix}{req.folder}/{rules.FILE_NAME}"
        extra: dict[str, Any] = {"Range": f"bytes={progress.offset}-"} if progress.offset else {}
        try:
            body = s3.get_object(Bucket=lst.bucket, Key=key, **extra)["Body"]
        except s3.exceptions.NoSuchKey:
            return SyncFolderResult(state="failed", error=f"{key} not found")
        id_type = integration.identifier_type
        entries: list[tuple[str, str]] = []
        rejections: list[tuple[int, str]] = []
        try:
            for raw, end in lines_from(body.iter_chunks(CHUNK), progress.offset):
                progress.line += 1
                if progress.line == 1:
                    try:
                        err = rules.header_error(id_type, cells(raw.removeprefix(b"\xef\xbb\xbf")))
                    except UnicodeDecodeError:
                        err = "header is not UTF-8"
                    if err:
                        return SyncFolderResult(state="rejected", error=err, lines_read=1)
                    progress.offset = end
                    continue
                if raw.strip():
                    try:
                        verdict = rules.row_value(id_type, cells(raw))
                    except UnicodeDecodeError:
                        verdict = "not valid UTF-8"
                    except csv.Error as exc:
                        verdict = f"malformed CSV: {exc}"[:200]
                    if isinstance(verdict, str):
                        rejections.append((progress.line, verdict))
                        progress.rejected += 1
                    else:
                        value, value_hash = verdict
                        entries.append((value_hash, self.box.encrypt(value)))
                        progress.accepted += 1
                progress.offset = end
                if progress.rejected > req.max_rejected_rows:
                    self._write(req, entries, rejections, progress)
                    return SyncFolderResult(
                        state="failed",
                        rows_accepted=progress.accepted,
                        rows_rejected=progress.rejected,
                        lines_read=progress.line,
                        error=f"more than {req.max_rejected_rows} rejected rows; the file was not applied",
                    )
                if len(entries) + len(rejections) >= req.batch_size:
                    self._write(req, entries, rejections, progress)
                    entries, rejections = [], []
            self._write(req, entries, rejections, progress)
        finally:
            body.close()
        if progress.line == 0:
            return SyncFolderResult(state="rejected", error="the file is empty (no header)")
        return SyncFolderResult(
            state="staged",
            rows_accepted=progress.accepted,
            rows_rejected=progress.rejected,
            lines_read=progress.line,
        )

    def _write(
        self,
        req: SyncFolderRequest,
        entries: list[tuple[str, str]],
        rejections: list[tuple[int, str]],
        p: SyncProgress,
    ) -> None:
        """Commit one batch with the sync's progress counters, then heartbeat the resume point."""
        with self.store.session() as s:
            lists.stage_entries(s, req.integration_id, req.generation, entries)
            lists.stage_rejections(s, req.sync_id, rejections)
            sync = s.get(SubscriberSync, req.sync_id)
            if sync is not None:
                sync.rows_accepted, sync.rows_rejected, sync.lines_read = p.accepted, p.rejected, p.line
                s.add(sync)
        activity.heartbeat(p.model_dump())

    @activity.defn(name="subscribers.finish")
    def finish(self, req: FinishSyncRequest) -> None:
        """Record the outcome; a staged file becomes the active set in this one transaction."""
        with self.store.session() as s:
            sync = s.get(SubscriberSync, req.sync_id)
            if sync is None or sync.state != "running":
                return  # a retry after success
            lst = s.get(SubscriberList, sync.integration_id)
            assert lst is not None
            r = req.result
            ok = r.state == "staged"
            if ok:
                lists.activate(s, lst, sync.generation, sync.folder, now_utc())
            # A failed or rejected folder keeps the previous set and is not retried by itself
            # (its sync record is final); the customer uploads a corrected file in a new folder.
            sync.state = "succeeded" if ok else r.state
            sync.error = r.error
            sync.rows_accepted = r.rows_accepted or sync.rows_accepted
            sync.rows_rejected = r.rows_rejected or sync.rows_rejected
            sync.lines_read = r.lines_read or sync.lines_read
            sync.finished_at = req.as_of
            sync.duration_ms = int((req.as_of - sync.started_at).total_seconds() * 1000)
            s.add(sync)

    @activity.defn(name="subscribers.cleanup")
    def cleanup(self, req: CleanupRequest) -> int:
        """Delete entries of generations no longer active (superseded or failed), in batches."""
        with self.store.session() as s:
            lst = s.get(SubscriberList, req.integration_id)
            generations = lists.stale_generations(s, lst) if lst is not None else []
        deleted = 0
        for gen in generations:
            while True:
                with self.store.session() as s:
                    n = lists.delete_generation_batch(s, req.integration_id, gen, CLEANUP_BATCH)
                deleted += n
                activity.heartbeat(deleted)
                if n < CLEANUP_BATCH:
                    break
        return deleted
