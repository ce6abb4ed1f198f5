"""Feed sync activities: stream a product or user CSV into staging, then apply it atomically.

`stage` streams the file (an upload, an S3 object or a URL) in chunks, parses rows, stages
accepted ones and records rejected lines, one transaction per batch, heartbeating the byte
offset and header so a retried attempt resumes where the last committed batch ended. `apply`
then updates products or users and records every changed value with its previous one, in ONE
transaction: a feed is applied whole or not at all. A URL feed's sync asks for the file only if it
changed since the last sync applied (`_unless`: a conditional GET); a 304 ends it `unchanged`, nothing
staged or applied. Once a sync of an uploaded file has ended,
the feed's older uploads are deleted (`prune_uploads`), keeping the newest few.
"""

from __future__ import annotations

import asyncio
import csv
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, CancelledError, FailureError

from activities import feed_overlap as overlap
from activities.streams import SourceMissing, cells, lines_from, s3_chunks, s3_head, source_changed, url_chunks
from domain import feeds as rules
from domain.feed_source import s3_feed_refusal
from domain.text import storable
from providers.base import ConfigurationError
from providers.url_guard import UrlGuard
from settings import Settings
from store import feed_products, objects
from store import subscribers as staging
from store.engine import Store
from store.feed_tables import (
    Feed,
    FeedRejection,
    FeedStage,
    FeedSync,
    ProductChange,
    UserAttributeChange,
    read_config,
)
from store.paging import keyset_pages
from store.tables import Product, User, now_utc
from store.users import by_cuid, new_user_id
from workflows.feed_models import (
    FeedApplied,
    FeedBeginRequest,
    FeedBegun,
    FeedFinishRequest,
    FeedProgress,
    FeedStageRequest,
    FeedStageResult,
)

log = logging.getLogger(__name__)
APPLY_CHUNK = 500
DUPLICATE_EXAMPLES = 5  # keys seen twice named on the sync (the count covers them all)
# Uploaded files of a feed kept after a sync ends: the newest ones may still be read (a sync begun
# meanwhile, or retried), and operators look at the last files when a sync went wrong.
KEEP_UPLOADS = 3
# A file with no sync at all (its upload is still being written or its sync not begun yet; or the
# workflow never started) is deleted only once this old: never under a sync about to read it.
ORPHAN_AGE = timedelta(days=1)
PRUNE_BATCH = 1000  # files deleted at most per ended sync (a backlog goes over the next syncs)


class _Unchanged(Exception):
    """The URL's file is the version the feed's last applied sync read (a 304): nothing to stage."""

    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.version = version


class _Refused(Exception):
    """The feed's source is one it may not read (`domain/feed_source.py`): the sync ends `refused`."""


class FeedActivities:
    def __init__(self, store: Store, settings: Settings, temporal: Client | None = None) -> None:
        """`temporal`: the worker's client (built on its running event loop), to tell whether another
        sync of a feed still runs (activities/feed_overlap.py). Without it a sync begins whatever else runs."""
        self.store = store
        self.settings = settings
        self.liveness = overlap.Liveness(temporal, asyncio.get_running_loop()) if temporal is not None else None

    @activity.defn(name="feeds.begin")
    def begin(self, req: FeedBeginRequest) -> FeedBegun:
        """Record the sync, `running`; or `skipped` (read nothing) while another sync of the feed runs.
        Rows of the feed's syncs whose workflow ended without finishing them are ended `failed` first."""
        info = activity.info()
        with self.store.session() as s:
            done = s.get(FeedSync, req.sync_id)
            if done is not None:  # a retried attempt: the decision was committed with the row
                return FeedBegun(skipped=done.error if done.state == "skipped" else None)
            others = overlap.others_running(s, req.feed_id, req.sync_id)
        # Asked of Temporal outside any transaction (no lock held over a network call).
        ended = overlap.check(self.liveness, others) if self.liveness is not None else {}
        with self.store.session() as s:
            overlap.end_dead(s, ended, now_utc())
        with self.store.session() as s:
            feed = overlap.lock_feed(s, req.feed_id)
            if feed is None:
                raise ApplicationError("feed was deleted", type="NotFound", non_retryable=True)
            sync = FeedSync(
                id=req.sync_id, feed_id=feed.id, section_id=feed.section_id, object_key=req.object_key,
                started_at=req.as_of, feed_config=read_config(feed), workflow_id=info.workflow_id,
                workflow_run_id=info.workflow_run_id,
            )  # fmt: skip
            other = (
                overlap.running_sync(overlap.others_running(s, feed.id, req.sync_id), ended)
                if self.liveness is not None
                else None
            )
            if other is not None:
                sync.state, sync.error = "skipped", overlap.skip_reason(other)
                sync.finished_at, sync.duration_ms = req.as_of, 0
                log.info("feed sync %s skipped: %s", req.sync_id, sync.error)
            s.add(sync)
            return FeedBegun(skipped=sync.error if other is not None else None)

    @contextmanager
    def _open(
        self, feed: Feed, sync: FeedSync, p: FeedProgress, unless: str | None = None
    ) -> Iterator[tuple[Iterator[bytes], FeedProgress]]:
        """The file's bytes from where `p` resumes, with `p` as it stands once the source's version is
        pinned (`_pin`: back to the start when the file is not the version `p` was read from).

        `unless` (a URL feed read from its start): the version already applied; the GET is conditional
        and `_Unchanged` is raised when the server answers 304."""
        if sync.object_key:
            # Every upload gets a key of its own (time + random suffix) and is never rewritten: no pin.
            with _uploaded(objects.uploads(self.settings), sync.object_key, p.offset) as chunks:
                yield chunks, p
        elif feed.source == "s3" and feed.s3_bucket and feed.s3_key:
            # Checked again here, not only on save: a feed saved before the rule (or edited in the database)
            # never gets Rejoin's credentials pointed at another section's files or another bucket.
            refusal = s3_feed_refusal(
                self.settings.feed_buckets, self.settings.subscriber_bucket, feed.section_id, feed.s3_bucket,
                feed.s3_key,
            )  # fmt: skip
            if refusal is not None:
                raise _Refused(f"{refusal[0]}: {refusal[1]}; nothing was read")
            s3 = objects.client(self.settings)
            try:
                head = s3_head(s3, feed.s3_bucket, feed.s3_key)
            except SourceMissing as exc:
                # As a subscriber list's missing file: retrying cannot make it appear; fail saying where.
                # `from None` here and below: the message says it all; the chain only adds stack traces.
                raise ApplicationError(str(exc), type="NoSource", non_retryable=True) from None
            etag, size = str(head["ETag"]), int(head["ContentLength"])
            p = self._pin(sync.id, etag, p, restartable=True)
            if p.offset and p.offset >= size:  # a retry after the last batch was committed (S3 refuses the range)
                yield iter(()), p
                return
            # If-Match: a file replaced after the HEAD is refused (SourceChanged), never read at this offset.
            with s3_chunks(s3, feed.s3_bucket, feed.s3_key, p.offset, if_match=etag) as chunks:
                yield chunks, p
        elif feed.source == "url" and feed.url:
            # The worker fetches a customer-given URL: same guard as provider calls (no SSRF), every hop
            # checked and connected to the address checked (no DNS rebinding); plain http allowed (no
            # credential travels), the operator's allow-list not (it is for admin-configured relays).
            guard = UrlGuard(self.settings.allow_private_urls, https_only=False)
            with ExitStack() as stack:
                try:
                    read = stack.enter_context(
                        url_chunks(feed.url, p.offset, if_range=p.etag, guard=guard, unless=unless)
                    )
                except ConfigurationError as exc:
                    raise ApplicationError(str(exc), type="NoSource", non_retryable=True) from None
                if read.unchanged and unless is not None:
                    raise _Unchanged(unless)
                # start 0: the server sent the whole (changed) file, so starting over needs no new request.
                p = self._pin(sync.id, read.version, p, restartable=read.start == 0)
                yield read.chunks, p
        else:
            raise ApplicationError("the feed has no file to read", type="NoSource", non_retryable=True)

    def _pin(self, sync_id: str, version: str | None, p: FeedProgress, restartable: bool) -> FeedProgress:
        """Tie the sync to the source file's `version` (S3 ETag; a URL's strong ETag or Last-Modified).
        Rows staged from another version (the file was replaced mid-sync; or a sync begun before versions
        were kept) are discarded with their counters and rejections and the file is read from its start:
        the new file read at the old byte offset would splice two files and accept half a row. When the
        read already began at the offset (`restartable` false), the attempt fails (retryable) instead."""
        with self.store.session() as s:
            sync = s.get(FeedSync, sync_id)
            assert sync is not None
            if sync.source_etag == version and p.etag == version:
                return p
            if p.offset:
                log.warning("feed sync %s: the file changed since line %d; starting it over", sync_id, p.line)
            _discard_staged(s, sync, version)
        if p.offset and not restartable:
            raise source_changed("the feed's file")
        return FeedProgress(etag=version)

    def _unless(self, feed: Feed, sync: FeedSync, p: FeedProgress, refetch: bool) -> str | None:
        """The version of the URL's file to ask for only if changed (If-None-Match / If-Modified-Since),
        or None for a plain GET: that of the feed's last sync that applied (`succeeded`; not one that
        failed, was rejected or refused, nor an `unchanged` one: they applied nothing), provided it read
        the URL (not an upload) with a version, and the feed still reads as it did then (`read_config`).
        Never for a resumed read (offset > 0: If-Range), nor when the sync was asked to `refetch`."""
        if refetch or p.offset or sync.object_key or feed.source != "url":
            return None
        with self.store.session() as s:
            last = s.exec(
                select(FeedSync)
                .where(FeedSync.feed_id == feed.id, FeedSync.state == "succeeded", FeedSync.id != sync.id)
                .order_by(col(FeedSync.finished_at).desc(), col(FeedSync.started_at).desc())
                .limit(1)
            ).first()
        if last is None or last.object_key or not last.source_etag or last.feed_config != read_config(feed):
            return None
        return last.source_etag

    def _end_unchanged(self, sync_id: str, version: str) -> None:
        """The file is the one already applied: forget anything an earlier attempt staged from another
        version (its heartbeat lost), and record the version confirmed."""
        with self.store.session() as s:
            sync = s.get(FeedSync, sync_id)
            assert sync is not None
            _discard_staged(s, sync, version)
            sync.duplicates, sync.duplicate_keys = 0, None  # no staging ends this sync to record them

    @activity.defn(name="feeds.stage")
    def stage(self, req: FeedStageRequest) -> FeedStageResult:
        try:
            return self._stage(req)
        except CancelledError:
            raise  # the sync is being cancelled: not a failed attempt
        except Exception as exc:
            self._note_attempt_error(req.sync_id, exc)
            raise

    def _note_attempt_error(self, sync_id: str, exc: Exception) -> None:
        """Show why this attempt failed on the sync while it is still `running` (the next attempt may
        succeed, which clears it; the last one's reason ends the sync as "sync gave up: ..."): a hanging
        or failing URL is otherwise a `running` sync with no `error` for minutes. Best effort: the
        attempt's own error is what Temporal records and retries on."""
        info = activity.info()
        limit = info.retry_policy.maximum_attempts if info.retry_policy is not None else 0
        of = f" of {limit}" if limit else ""
        more = "" if _not_retried(exc) or (limit and info.attempt >= limit) else "; retrying"
        # A FailureError's message alone: its str() begins with the type ("SourceUnanswered: ...").
        why = (exc.message if isinstance(exc, FailureError) else str(exc)) or type(exc).__name__
        try:
            with self.store.session() as s:
                sync = s.get(FeedSync, sync_id)
                if sync is not None and sync.state == "running":
                    sync.error = storable(f"attempt {info.attempt}{of} failed: {why}{more}")[:500]
                    s.add(sync)
        except Exception:
            log.warning("feed sync %s: could not record the failed attempt", sync_id, exc_info=True)

    def _stage(self, req: FeedStageRequest) -> FeedStageResult:
        with self.store.session() as s:
            feed, sync = s.get(Feed, req.feed_id), s.get(FeedSync, req.sync_id)
        if feed is None or sync is None:
            raise ApplicationError("feed or sync missing", type="NotFound", non_retryable=True)
        details = activity.info().heartbeat_details
        p = FeedProgress.model_validate(details[0]) if details else FeedProgress()
        if p.etag != sync.source_etag:
            # A heartbeat of a version since discarded (its retry lost the heartbeat that restarted): from 0.
            p = FeedProgress()
        parse = rules.parse_product if feed.kind == "product" else rules.parse_user
        key_name = "sku" if feed.kind == "product" else "cuid"
        rows: dict[str, dict[str, Any]] = {}
        rejections: list[tuple[int, str]] = []
        opened = ExitStack()
        try:
            chunks, p = opened.enter_context(self._open(feed, sync, p, self._unless(feed, sync, p, req.refetch)))
        except _Unchanged as same:
            self._end_unchanged(req.sync_id, same.version)
            return FeedStageResult(state="unchanged")
        except _Refused as refused:
            return FeedStageResult(state="refused", error=str(refused))
        with opened:
            for raw, end in lines_from(chunks, p.offset):
                p.line += 1
                if p.line == 1:
                    try:
                        p.header = cells(raw.removeprefix(b"\xef\xbb\xbf"))
                        err = rules.header_error(feed.kind, p.header)
                    except (UnicodeDecodeError, csv.Error):
                        err = "the header is not valid UTF-8 CSV"
                    if err:
                        return FeedStageResult(state="rejected", error=err, lines_read=1)
                elif raw.strip():
                    try:
                        parsed = parse(p.header, cells(raw))
                    except UnicodeDecodeError:
                        parsed = "not valid UTF-8"
                    except csv.Error as exc:
                        parsed = f"malformed CSV: {exc}"
                    if isinstance(parsed, str):
                        rejections.append((p.line, parsed))
                        p.rejected += 1
                    else:
                        if parsed[key_name] in rows:
                            _note_duplicate(p, parsed[key_name])
                        rows[parsed[key_name]] = parsed  # a later row for the same key wins (counted)
                        p.accepted += 1
                p.offset = end
                if p.rejected > req.max_rejected_rows:
                    self._write(req.sync_id, rows, rejections, p)
                    return FeedStageResult(
                        state="failed", rows_accepted=p.accepted, rows_rejected=p.rejected, lines_read=p.line,
                        error=f"more than {req.max_rejected_rows} rejected rows; the feed was not applied",
                    )  # fmt: skip
                if len(rows) + len(rejections) >= req.batch_size:
                    self._write(req.sync_id, rows, rejections, p)
                    rows, rejections = {}, []
        self._write(req.sync_id, rows, rejections, p)
        if p.line == 0:
            return FeedStageResult(state="rejected", error="the file is empty (no header)")
        if p.rejected and not p.accepted:
            # Rows but not one usable: a broken export, not an update. Rejected whatever the mode (delta
            # included, which would otherwise "succeed" applying nothing; a full file would remove the
            # whole catalogue), the rejected lines kept with their reasons.
            return FeedStageResult(
                state="rejected", rows_rejected=p.rejected, lines_read=p.line,
                error=f"no row of the file was accepted ({p.rejected} rejected, see the rejected lines); "
                "nothing was applied",
            )  # fmt: skip
        duplicates = self._record_duplicates(req.sync_id, p)
        return FeedStageResult(
            state="staged", rows_accepted=p.accepted, rows_rejected=p.rejected, lines_read=p.line,
            duplicates=duplicates, duplicate_keys=p.duplicate_keys if duplicates else [],
        )  # fmt: skip

    def _record_duplicates(self, sync_id: str, p: FeedProgress) -> int:
        """Count the accepted rows a later row of the same key replaced (accepted rows less staged keys:
        exact across resumed attempts) and keep the count and first keys on the sync."""
        with self.store.session() as s:
            staged = s.exec(select(func.count()).where(col(FeedStage.sync_id) == sync_id)).one()
            duplicates = max(0, p.accepted - int(staged))
            sync = s.get(FeedSync, sync_id)
            if sync is not None:
                sync.duplicates, sync.duplicate_keys = duplicates, (p.duplicate_keys if duplicates else None)
                s.add(sync)
        return duplicates

    def _write(
        self,
        sync_id: str,
        rows: dict[str, dict[str, Any]],
        rejections: list[tuple[int, str]],
        p: FeedProgress,
    ) -> None:
        with self.store.session() as s:
            if len(p.duplicate_keys) < DUPLICATE_EXAMPLES and rows:
                # Keys already staged by an earlier batch: this batch's row replaces theirs.
                for key in s.exec(
                    select(FeedStage.key).where(FeedStage.sync_id == sync_id, col(FeedStage.key).in_(list(rows)))
                ):
                    _note_duplicate(p, key)
            staged: list[dict[str, object]] = [{"sync_id": sync_id, "key": k, "data": d} for k, d in rows.items()]
            staging.upsert(s, FeedStage, staged, ["sync_id", "key"], ["data"])
            # A reason may quote the row (a bad price): never a NUL into a text column.
            reasons = [{"sync_id": sync_id, "line": n, "reason": storable(r)[:200]} for n, r in rejections]
            staging.insert_ignoring(s, FeedRejection, reasons)
            sync = s.get(FeedSync, sync_id)
            if sync is not None:
                sync.rows_accepted, sync.rows_rejected, sync.lines_read = p.accepted, p.rejected, p.line
                s.add(sync)
        activity.heartbeat(p.model_dump())

    @activity.defn(name="feeds.apply")
    def apply(self, req: FeedFinishRequest) -> FeedApplied:
        """Apply the staged rows and record what changed, all in one transaction."""
        applied = self._apply(req)
        self._prune_after(req.sync_id)  # also on a retry after success: its first attempt may have died here
        return applied

    def _apply(self, req: FeedFinishRequest) -> FeedApplied:
        with self.store.session() as s:
            sync = s.get(FeedSync, req.sync_id)
            if sync is None:
                raise ApplicationError("sync missing", type="NotFound", non_retryable=True)
            if sync.state != "running":
                # A retry after the first attempt committed: its outcome as recorded (refused included).
                return FeedApplied(state=sync.state, changes=sync.changes, removed=sync.removed)
            feed = s.get(Feed, sync.feed_id)
            assert feed is not None
            gone: list[str] = []
            if feed.kind == "product" and feed.mode == "full":
                gone = feed_products.missing(s, feed.id, sync.id)
                refusal = _removal_refusal(len(gone), feed_products.listed_count(s, feed.id), req, self.settings)
                if refusal:
                    # Most likely a truncated file: apply nothing, say why and how to force it.
                    s.execute(delete(FeedStage).where(FeedStage.sync_id == sync.id))  # type: ignore[arg-type]
                    _close(sync, "refused", req, 0)
                    sync.error, sync.removed = refusal, len(gone)
                    s.add(sync)
                    return FeedApplied(state="refused", removed=len(gone))
            changes = 0
            for chunk in _staged_chunks(s, sync.id):
                if feed.kind == "product":
                    changes += _apply_products(s, feed, sync, chunk, req.as_of)
                else:
                    changes += _apply_users(s, sync, chunk, req.as_of)
            changes += feed_products.remove(s, feed, sync, gone, req.as_of)
            s.execute(delete(FeedStage).where(FeedStage.sync_id == sync.id))  # type: ignore[arg-type]
            _close(sync, "succeeded", req, changes)
            sync.removed = len(gone)
            s.add(sync)
            return FeedApplied(changes=changes, removed=len(gone))

    @activity.defn(name="feeds.fail")
    def fail(self, req: FeedFinishRequest) -> None:
        with self.store.session() as s:
            sync = s.get(FeedSync, req.sync_id)
            if sync is not None and sync.state == "running":
                s.execute(delete(FeedStage).where(FeedStage.sync_id == sync.id))  # type: ignore[arg-type]
                _close(sync, req.result.state, req, 0)
                s.add(sync)
        self._prune_after(req.sync_id)

    def _prune_after(self, sync_id: str) -> None:
        """Once an upload's sync has ended (committed, whatever its outcome), delete the feed's older uploads."""
        with self.store.session() as s:
            sync = s.get(FeedSync, sync_id)
        if sync is not None and sync.object_key and sync.state != "running":
            prune_uploads(self.store, objects.uploads(self.settings), sync.feed_id, sync.object_key)


def prune_uploads(store: Store, uploads: objects.Uploads, feed_id: str, finished_key: str) -> None:
    """Delete the feed's uploaded files older than `finished_key` (the file of a sync that just ended),
    except the newest KEEP_UPLOADS and any file a sync still running (or retrying) reads. Best effort:
    failures are logged, never raised (the sync has ended; the next one tries again)."""
    try:
        prefix = finished_key.rsplit("/", 1)[0] + "/"
        listed = uploads.keys(prefix)
        older = [k for k in listed[: max(0, len(listed) - KEEP_UPLOADS)] if k < finished_key][:PRUNE_BATCH]
        stale = _ended_or_orphaned(store, feed_id, older, prefix)
        failed = uploads.delete(stale) if stale else {}
    except Exception:
        log.warning("feed %s: the older uploaded files could not be deleted", feed_id, exc_info=True)
        return
    for key, why in failed.items():
        log.warning("feed %s: could not delete the uploaded file %s: %s", feed_id, key, why)


def _ended_or_orphaned(store: Store, feed_id: str, keys: list[str], prefix: str) -> list[str]:
    """Of `keys` (in key order), those whose syncs all ended, and those no sync names that are older than
    ORPHAN_AGE (keys begin with their upload time, `objects.upload_key`)."""
    states: dict[str, set[str]] = {}
    with store.session() as s:
        for at in range(0, len(keys), APPLY_CHUNK):
            rows = s.exec(
                select(FeedSync.object_key, FeedSync.state).where(
                    FeedSync.feed_id == feed_id, col(FeedSync.object_key).in_(keys[at : at + APPLY_CHUNK])
                )
            ).all()
            for key, state in rows:
                states.setdefault(str(key), set()).add(state)
    orphan_before = prefix + (now_utc() - ORPHAN_AGE).strftime(objects.UPLOAD_TIME)
    return [
        k for k in keys
        if (k in states and "running" not in states[k]) or (k not in states and k < orphan_before)
    ]  # fmt: skip


def _discard_staged(s: Session, sync: FeedSync, version: str | None) -> None:
    """Forget what `sync` staged (rows, rejected lines and their counters) and tie it to the source
    file's `version`: the file changed under it (`_pin`), or is the one already applied (`_end_unchanged`)."""
    s.execute(delete(FeedStage).where(FeedStage.sync_id == sync.id))  # type: ignore[arg-type]
    s.execute(delete(FeedRejection).where(FeedRejection.sync_id == sync.id))  # type: ignore[arg-type]
    sync.rows_accepted = sync.rows_rejected = sync.lines_read = 0
    sync.source_etag = version
    s.add(sync)


def _not_retried(exc: BaseException) -> bool:
    """Whether Temporal will not retry the activity after `exc` (a non-retryable ApplicationError)."""
    return isinstance(exc, ApplicationError) and exc.non_retryable


def _note_duplicate(p: FeedProgress, key: str) -> None:
    if len(p.duplicate_keys) < DUPLICATE_EXAMPLES and key not in p.duplicate_keys:
        p.duplicate_keys.append(key)


@contextmanager
def _uploaded(store: objects.Uploads, key: str, offset: int) -> Iterator[Iterator[bytes]]:
    with ExitStack() as stack:
        try:
            chunks = stack.enter_context(store.chunks(key, offset))
        except objects.ObjectMissing as exc:
            # Retrying cannot bring the file to this host; fail the sync saying why.
            raise ApplicationError(str(exc), type="NoSource", non_retryable=True) from None
        yield chunks


def _close(sync: FeedSync, state: str, req: FeedFinishRequest, changes: int) -> None:
    r = req.result
    sync.state = state
    sync.error = r.error
    sync.rows_accepted = r.rows_accepted or sync.rows_accepted
    sync.rows_rejected = r.rows_rejected or sync.rows_rejected
    sync.lines_read = r.lines_read or sync.lines_read
    sync.changes = changes
    sync.finished_at = req.as_of
    sync.duration_ms = int((req.as_of - sync.started_at).total_seconds() * 1000)


def _staged_chunks(s: Session, sync_id: str) -> Iterator[list[FeedStage]]:
    """Staged rows in key order, a chunk at a time (keyset pagination, bounded memory)."""
    return keyset_pages(
        s, FeedStage, FeedStage.key, col(FeedStage.sync_id) == sync_id, page_size=APPLY_CHUNK, expunge=True
    )


def _removal_refusal(removing: int, listed: int, req: FeedFinishRequest, settings: Settings) -> str | None:
    """Why a full file that would remove too much of the catalogue is refused, or None."""
    if req.force or not listed or removing / listed <= settings.feed_max_removal_share:
        return None
    return (
        f"the file would remove {removing} of the feed's {listed} products ({removing / listed:.0%}, more than "
        f"{settings.feed_max_removal_share:.0%}); nothing was applied. If that is intended, sync again with "
        "force=true"
    )


def _apply_products(s: Session, feed: Feed, sync: FeedSync, chunk: list[FeedStage], now: datetime) -> int:
    skus = [r.key for r in chunk]
    back = feed_products.returning(s, feed.id, skus)
    feed_products.mark_listed(s, feed, sync.id, skus)
    current = {
        p.sku: p
        for p in s.exec(
            select(Product).where(Product.section_id == sync.section_id, col(Product.sku).in_(skus))
        )
    }
    changes = 0
    for row in chunk:
        new = row.data
        if row.key in back and "in_stock" not in new:
            new = {**new, "in_stock": back[row.key]}  # listed again: the stock flag it had before removal
        old = current.get(row.key)
        before = old.model_dump(exclude={"section_id", "updated_at"}) if old is not None else None
        # Merged in memory from the chunk's one read: columns the file leaves out keep their stored value.
        after = rules.merge_product(before, new)
        for field, was, now_value in rules.product_changes(before, after):
            s.add(
                ProductChange(
                    section_id=sync.section_id,
                    sync_id=sync.id,
                    sku=row.key,
                    field=field,
                    old=was,
                    new=now_value,
                )
            )
            changes += 1
        product = old or Product(section_id=sync.section_id, sku=row.key, updated_at=now)
        for name in rules.PRODUCT_FIELDS:
            setattr(product, name, after[name])
        product.attributes = after["attributes"]
        product.updated_at = now
        s.add(product)
    s.flush()
    return changes


def _apply_users(s: Session, sync: FeedSync, chunk: list[FeedStage], now: datetime) -> int:
    changes = 0
    for row in chunk:
        user = by_cuid(s, sync.section_id, row.key)
        attrs: dict[str, Any] = row.data.get("attributes") or {}
        if user is None:
            # Known from the feed first: a later identification with this CUID lands here.
            user = User(
                id=new_user_id(),
                section_id=sync.section_id,
                cuid=row.key,
                cuid_type="id",
                created_at=now,
                updated_at=now,
            )
            user.attributes = attrs
            s.add(user)
            continue
        for name, was, value in rules.attribute_changes(user.attributes, attrs):
            s.add(
                UserAttributeChange(
                    section_id=sync.section_id,
                    sync_id=sync.id,
                    user_id=user.id,
                    attribute=name,
                    old=was,
                    new=value,
                )
            )
            changes += 1
        user.attributes = {**user.attributes, **attrs}
        user.updated_at = now
        s.add(user)
    s.flush()
    return changes
