"""Subscriber-list sync activities: list upload folders, claim one, stream its file, switch.

`sync_folder` streams `data.csv` from S3 in 1 MiB chunks (the file is never held in memory),
validates and hashes rows in bulk (`domain.subscribers.parse_lines`), seals the values
(`SecretBox.seal_many`) and loads them into the generation's own set table (COPY on
PostgreSQL), one transaction per batch that also commits the sync's counters and the byte
offset reached; it heartbeats after each. A retried attempt (or a later run resuming the same
claimed folder) restarts from the committed offset with a ranged GET: nothing is written or
counted twice. At the end the set is indexed once. Nothing becomes visible to send decisions
until `finish` switches the list's active generation in one transaction; `cleanup` drops the
tables of superseded and failed generations.
"""

from __future__ import annotations

import csv
import logging
import secrets
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext

from sqlmodel import col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.seal_pool import Sealed, SealPool, seal_slice
from activities.streams import (
    BIG_CHUNK,
    LineTooLong,
    MixedLineEnds,
    SourceMissing,
    cells,
    line_blocks,
    s3_chunks,
    s3_head,
)
from domain import subscribers as rules
from security.crypto import SecretBox
from settings import Settings
from store import objects
from store import subscribers as lists
from store.engine import Store
from store.subscriber_tables import SYNC_UNDER_WAY, SubscriberList, SubscriberSync, set_table_name
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
SLICE = 8192  # lines parsed and sealed at a time (a helper's working set stays a few MB)


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
                        SubscriberSync.integration_id == req.integration_id,
                        col(SubscriberSync.state).not_in(SYNC_UNDER_WAY),
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
                return Claim(
                    sync_id=row.id, generation=row.generation, skip=row.state not in SYNC_UNDER_WAY,
                    force=row.state == "forced",
                )  # fmt: skip
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
        p = self._committed(req.sync_id)
        if p.line:
            log.info("sync %s resuming at line %d (byte %d)", req.sync_id, p.line, p.offset)
        table = set_table_name(req.integration_id, req.generation)
        with self.store.session() as s:
            if not p.offset and not p.line:
                # Nothing committed: start from an empty table (a forced folder's refused load may remain).
                lists.drop_set(s, table)
            lists.create_set(s, table)
        s3 = objects.client(self.settings)
        key = f"{lst.prefix}{req.folder}/{rules.FILE_NAME}"
        try:
            head = s3_head(s3, lst.bucket, key)
        except SourceMissing as exc:
            return SyncFolderResult(state="failed", error=str(exc))
        size, etag = int(head["ContentLength"]), str(head["ETag"])
        p = self._pin(req, table, p, etag)
        if p.offset < size:  # else a retry after the last batch was committed: nothing left to read
            try:
                with s3_chunks(s3, lst.bucket, key, p.offset, BIG_CHUNK, if_match=etag) as chunks:
                    early = self._stream(req, integration.identifier_type, table, chunks, p, size)
            except (LineTooLong, MixedLineEnds) as exc:
                return SyncFolderResult(state="failed", error=str(exc), lines_read=p.line)
            if early is not None:
                return early
        if p.line == 0:
            return SyncFolderResult(state="rejected", error="the file is empty (no header)")
        with self.store.session() as s:
            lists.index_set(s, table)  # before the removal count: it looks members up in the new set
        refusal = None if req.force else self._removal_refusal(lst, table, p)
        if refusal is not None:
            return refusal
        activity.heartbeat(p.model_dump())
        return SyncFolderResult(
            state="staged", rows_accepted=p.accepted, rows_rejected=p.rejected, lines_read=p.line
        )

    def _removal_refusal(self, lst: SubscriberList, table: str, p: SyncProgress) -> SyncFolderResult | None:
        """A file that would remove more than `list_max_removal_share` of the active list (a header-only or
        truncated upload, or a wrong export listing other people) is not applied: the list keeps its members
        until the user forces the folder.

        Measured member by member: the active set's rows whose identifier the loaded set (`table`) lacks,
        counted by one anti-join in the database (`store.subscribers.removed_count`), so a file swapping
        most people for as many others is refused, where comparing sizes let it through."""
        share = self.settings.list_max_removal_share
        with self.store.session() as s:
            listed = lists.active_size(s, lst)
            removing = lists.removed_count(s, lst, table) if listed and share < 1 else 0
        if listed == 0 or removing / listed <= share:
            return None
        return SyncFolderResult(
            state="refused", rows_accepted=p.accepted, rows_rejected=p.rejected, lines_read=p.line,
            error=(
                f"the file lists {p.accepted} subscribers and the active list has {listed}, {removing} of whom the "
                f"file does not list: applying it would remove at least {removing} ({removing / listed:.0%}, more "
                f"than {share:.0%}); nothing was applied and the list keeps its members. If that is intended, "
                "sync again with force=true (POST .../subscribers/sync?force=true)"
            ),
        )  # fmt: skip

    def _committed(self, sync_id: str) -> SyncProgress:
        """Where to (re)start: the progress committed with the last batch. The database, not the
        heartbeat, is the truth: a batch committed just before a crash is never written twice."""
        with self.store.session() as s:
            sync = s.get(SubscriberSync, sync_id)
        if sync is None:
            raise ApplicationError("no such sync", type="NotProvisioned", non_retryable=True)
        return SyncProgress(
            offset=sync.resume_offset, line=sync.lines_read, accepted=sync.rows_accepted, rejected=sync.rows_rejected
        )

    def _pin(self, req: SyncFolderRequest, table: str, p: SyncProgress, etag: str) -> SyncProgress:
        """Tie the sync to the object version `etag`. Rows committed from another version (the
        customer replaced data.csv mid-sync; or a sync begun before ETags were kept) are discarded
        with their counters and rejections, so the file is read again from its start: a ranged
        read of the new object at the old offset would splice two files and cut a row in half."""
        with self.store.session() as s:
            sync = s.get(SubscriberSync, req.sync_id)
            assert sync is not None
            if sync.source_etag == etag:
                return p
            if p.offset:
                log.warning("sync %s: %s changed since line %d; starting it over", req.sync_id, req.folder, p.line)
                lists.drop_set(s, table)
                lists.create_set(s, table)
                lists.clear_rejections(s, req.sync_id)
                sync.rows_accepted = sync.rows_rejected = sync.lines_read = sync.resume_offset = 0
                p = SyncProgress()
            sync.source_etag = etag
            s.add(sync)
        return p

    def _stream(
        self, req: SyncFolderRequest, id_type: str, table: str, chunks: Iterator[bytes], p: SyncProgress, size: int
    ) -> SyncFolderResult | None:
        """Validate, hash, seal and load the file from `p` on, committing every `batch_size` rows.
        Returns the outcome when the file is rejected or fails, None when it was read to the end.

        Slices go to seal helper processes when the file is big (PostgreSQL only), else are sealed
        here; either way results are applied strictly in file order, so line numbers, counters,
        the rejection limit and the committed offset are the same."""
        frame = self.store.engine.dialect.name == "postgresql"
        helpers = self.settings.subscriber_sync_processes if frame else 0
        use_pool = helpers > 0 and size - p.offset >= self.settings.subscriber_sync_pool_min_bytes
        with (
            _Committer(self, req, table) as committer,
            SealPool(self.settings.secret_keys, helpers) if use_pool else nullcontext() as pool,
        ):
            pending = _Batch()
            inflight: deque[tuple[Future[Sealed], list[bytes], int, int, int]] = deque()
            line, offset = p.line, p.offset  # where the next slice starts

            def seal(part: list[bytes], first: int) -> Future[Sealed]:
                budget = req.max_rejected_rows - p.rejected
                if pool is not None:
                    return pool.submit(id_type, part, first, budget)
                done: Future[Sealed] = Future()
                done.set_result(seal_slice(self.box, id_type, part, first, budget, frame))
                return done

            def apply() -> SyncFolderResult | None:
                nonlocal pending
                future, part, first, start, end = inflight.popleft()
                res = future.result()
                budget = req.max_rejected_rows - p.rejected
                if len(res.rejections) > budget:  # the limit falls in this slice: stop exactly where it does
                    res = seal_slice(self.box, id_type, part, first, budget, frame)
                consumed = part[: res.consumed]
                p.line = first - 1 + res.consumed
                # Whole lines, each with its "\n" (the file's last line may lack one: `end` caps it).
                p.offset = end if res.consumed == len(part) else min(end, start + sum(map(len, consumed)) + len(consumed))
                p.accepted += res.accepted
                p.rejected += len(res.rejections)
                pending.add(res)
                if p.rejected > req.max_rejected_rows:
                    committer.submit(pending, p)
                    return SyncFolderResult(
                        state="failed", rows_accepted=p.accepted, rows_rejected=p.rejected, lines_read=p.line,
                        error=f"more than {req.max_rejected_rows} rejected rows; the file was not applied",
                    )  # fmt: skip
                if pending.rows >= req.batch_size:
                    committer.submit(pending, p)
                    pending = _Batch()
                return None

            for lines, block_end in line_blocks(chunks, offset):
                at = 0
                if line == 0:  # the header, in the first block
                    err = _header_error(id_type, lines[0])
                    if err:
                        return SyncFolderResult(state="rejected", error=err, lines_read=1)
                    line, offset, at = 1, min(len(lines[0]) + 1, block_end), 1
                    p.line, p.offset = line, offset
                while at < len(lines):
                    part = lines[at : at + min(req.batch_size, SLICE)]
                    at += len(part)
                    end = block_end if at == len(lines) else offset + sum(map(len, part)) + len(part)
                    inflight.append((seal(part, line + 1), part, line + 1, offset, end))
                    line, offset = line + len(part), end
                    while len(inflight) > 2 * max(helpers, 1) or (pool is None and inflight):
                        if (failed := apply()) is not None:
                            return failed
            while inflight:
                if (failed := apply()) is not None:
                    return failed
            committer.submit(pending, p)
        return None

    def _write(self, req: SyncFolderRequest, table: str, batch: _Batch, p: SyncProgress) -> None:
        """Commit one batch with the sync's progress (counters and resume offset)."""
        with self.store.session() as s:
            lists.write_set(s, table, batch.hashes, batch.sealed, batch.framed)
            lists.stage_rejections(s, req.sync_id, batch.rejections)
            sync = s.get(SubscriberSync, req.sync_id)
            assert sync is not None
            sync.rows_accepted, sync.rows_rejected, sync.lines_read = p.accepted, p.rejected, p.line
            sync.resume_offset = p.offset
            s.add(sync)

    @activity.defn(name="subscribers.finish")
    def finish(self, req: FinishSyncRequest) -> None:
        """Record the outcome; a staged file becomes the active set in this one transaction."""
        with self.store.session() as s:
            sync = s.get(SubscriberSync, req.sync_id)
            if sync is None or sync.state not in SYNC_UNDER_WAY:
                return  # a retry after success
            lst = s.get(SubscriberList, sync.integration_id)
            assert lst is not None
            r = req.result
            ok = r.state == "staged"
            if ok:
                lists.activate(s, lst, sync.generation, sync.folder, now_utc())
            # A failed, rejected or refused folder keeps the previous set and is not retried by itself
            # (its sync record is final); the customer uploads a corrected file in a new folder, or
            # forces a refused one (`store.subscribers.force_refused`).
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
        """Drop the set tables of generations no longer active (superseded or failed); returns how many."""
        with self.store.session() as s:
            lst = s.get(SubscriberList, req.integration_id)
            generations = lists.stale_generations(s, lst) if lst is not None else []
        for gen in generations:
            with self.store.session() as s:
                lists.drop_set(s, set_table_name(req.integration_id, gen))
            activity.heartbeat(gen)
        return len(generations)


class _Committer:
    """Commits batches on one writer thread while the activity thread parses and seals the next:
    the database's work (COPY, commit) overlaps Python's instead of following it. At most one
    batch is in flight, so memory stays two batches. Heartbeats stay on the activity thread
    (they need its context), each after its batch is committed; leaving waits for the last one."""

    def __init__(self, acts: SubscriberActivities, req: SyncFolderRequest, table: str) -> None:
        self.acts, self.req, self.table = acts, req, table
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="subscriber-sync-writer")
        self.inflight: tuple[Future[None], SyncProgress] | None = None

    def submit(self, batch: _Batch, p: SyncProgress) -> None:
        self._settle()
        snapshot = p.model_copy()
        self.inflight = (self.pool.submit(self.acts._write, self.req, self.table, batch, snapshot), snapshot)

    def _settle(self) -> None:
        if self.inflight is not None:
            future, snapshot = self.inflight
            self.inflight = None
            future.result()  # a failed commit fails the attempt; the retry resumes from the last one
            activity.heartbeat(snapshot.model_dump())

    def __enter__(self) -> _Committer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._settle()
        finally:
            self.pool.shutdown(wait=True)


class _Batch:
    """Rows sealed since the last commit (bounded by the batch size, whatever the file size)."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []
        self.sealed: list[bytes] = []
        self.framed: list[bytes] = []
        self.rejections: list[tuple[int, str]] = []
        self.rows = 0

    def add(self, res: Sealed) -> None:
        self.hashes += res.hashes
        self.sealed += res.sealed
        if res.framed:
            self.framed.append(res.framed)
        self.rejections += res.rejections
        self.rows += res.accepted + len(res.rejections)


def _header_error(id_type: str, raw: bytes) -> str | None:
    try:
        return rules.header_error(id_type, cells(raw.rstrip(b"\r").removeprefix(b"\xef\xbb\xbf")))
    except UnicodeDecodeError:
        return "header is not UTF-8"
    except csv.Error as exc:
        return f"header is not CSV: {exc}"[:200]
