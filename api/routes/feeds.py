"""Feeds (product catalog, user data) and batched campaign runs.

A feed syncs from an uploaded file (`PUT /feeds/{id}/file`, streamed to S3, or without S3 to
data_dir on one host: `store/objects.py`), or from its URL / S3 location on demand
(`POST /feeds/{id}/sync`) or on a schedule (`sync_every`). Each sync is a FeedSyncWorkflow; its
status (rows accepted, rejected lines with reasons, changes, duration, state) is on
`GET /feeds/{id}`. Runs of feed-driven and scheduled campaigns are visible on `GET /runs/{id}`;
`POST /campaigns/{id}/runs` starts a scheduled one.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import ColumnElement, case, func
from sqlmodel import Session, col, select
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.broadcast import send_time
from activities.feed_overlap import run_ended
from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unavailable, Unprocessable
from api.temporal_errors import calling_temporal
from domain.campaign import CampaignType
from domain.durations import Duration
from domain.feed_source import s3_feed_refusal
from domain.field_error import FieldError
from providers.base import ConfigurationError
from providers.url_guard import UrlGuard, check_url_shape, save_time_refusal
from settings import Settings
from store import objects
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.broadcasts import RETRY_REASON, WINDOW_REASON
from store.campaigns import load_spec
from store.engine import Store
from store.feed_tables import Feed, FeedRejection, FeedSync
from store.tables import Campaign, Journey, Send, now_utc
from workflows.broadcast import BroadcastWorkflow
from workflows.feed_models import BroadcastInput, FeedSyncInput
from workflows.feeds import FeedSyncWorkflow
from workflows.ids import broadcast_workflow_id, feed_sync_id, feed_sync_now_id, scheduled_run_id

router = APIRouter(prefix="/api/v1", tags=["feeds"])
UPLOAD_SPOOL = 8 << 20  # bytes kept in memory before spooling an upload to disk


class FeedIn(BaseModel):
    kind: Literal["product", "user"]
    name: str = Field(min_length=1, max_length=200)
    source: Literal["upload", "url", "s3"] = "upload"
    url: str | None = Field(None, max_length=4096)
    s3_bucket: str | None = Field(None, max_length=63)
    s3_key: str | None = Field(None, max_length=1024)
    sync_every: Duration | None = Field(None, description="Sync on this interval (ISO 8601, e.g. PT6H, or seconds)")
    mode: Literal["full", "delta"] = Field(
        "full", description="full: each file is the whole catalogue (missing products are removed); delta: changes only"
    )

    @model_validator(mode="after")
    def _source_fields(self) -> FeedIn:
        if self.source == "url" and not (self.url and self.url.startswith(("http://", "https://"))):
            raise FieldError("url", "an http or https URL is required for a url feed")
        if self.source == "s3" and not self.s3_bucket:
            raise FieldError("s3_bucket", "required for an s3 feed (with s3_key)")
        if self.source == "s3" and not self.s3_key:
            raise FieldError("s3_key", "required for an s3 feed (with s3_bucket)")
        if self.sync_every is not None and self.sync_every < timedelta(minutes=5):
            raise FieldError("sync_every", "must be at least 5 minutes")
        if self.sync_every is not None and self.source == "upload":
            raise FieldError("sync_every", "needs a url or s3 source (uploads sync when uploaded)")
        return self


class FeedOut(BaseModel):
    id: str
    kind: str
    name: str
    source: str
    url: str | None
    s3_bucket: str | None
    s3_key: str | None
    sync_every_seconds: int | None
    mode: str


class Rejection(BaseModel):
    line: int
    reason: str


class FeedSyncOut(BaseModel):
    id: str
    state: str
    rows_accepted: int
    rows_rejected: int
    lines_read: int
    changes: int
    removed: int
    duplicates: int = 0  # rows replaced by a later row with the same SKU / CUID (the last row wins)
    duplicate_keys: list[str] = []  # the first few of those keys
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    rejections: list[Rejection] = []


class FeedStatus(BaseModel):
    feed: FeedOut
    syncs: list[FeedSyncOut]


class SyncStarted(BaseModel):
    # The same for every sync the API starts for a feed (a second is refused while one runs); the
    # run id tells this sync's workflow run from the feed's earlier ones.
    workflow_id: str
    run_id: str = ""


class RunOut(BaseModel):
    id: str
    campaign_id: str
    campaign_version: int  # the version it sends (a scheduled run takes the latest when it wakes)
    reason: str
    state: str
    send_at: datetime | None
    total: int
    sent: int
    skipped: int
    failed: int
    pending: int
    waiting_for_window: int  # pending until their send window opens
    waiting_to_retry: int  # pending in their own backoff after a provider's 429, 5xx or lost answer
    # The run's sends (provider calls) that ended failed, also those of recipients skipped before
    # their retry (campaign paused, opted out): such a recipient counts `skipped`, its call `failed`.
    failed_sends: int
    # Of those, the ones an attempt of which may have reached the person (`possible_duplicate`):
    # as the campaign report's `possibly_delivered`.
    possibly_delivered: int
    # The skipped recipients by the code of their reason (the recorded reason up to its first ':',
    # e.g. "global_cap", "outranked", "not_opted_in", "holdout", "campaign_paused", "quiet_hours").
    skipped_by_reason: dict[str, int] = {}
    workflow_id: str
    created_at: datetime
    finished_at: datetime | None


def _feed(store: Store, section_id: str, feed_id: str) -> Feed:
    with store.session() as s:
        feed = s.get(Feed, feed_id)
    if feed is None or feed.section_id != section_id:
        raise NotFound("no such feed", field="feed_id")
    return feed


def _sync_input(
    settings: Settings, feed: Feed, object_key: str | None = None, force: bool = False, refetch: bool = False
) -> FeedSyncInput:
    return FeedSyncInput(
        section_id=feed.section_id, feed_id=feed.id, object_key=object_key,
        max_rejected_rows=settings.subscriber_max_rejected_rows, force=force, shards=settings.broadcast_shards,
        refetch=refetch,
    )  # fmt: skip

FORCE = Query(False, description="Apply a full product file even if it removes more than the allowed share")
REFETCH = Query(
    False,
    description="Read a URL feed's file whole even if the server says it is unchanged since the last applied "
    "sync (no If-None-Match / If-Modified-Since)",
)


async def _refuse_internal_url(settings: Settings, url: str) -> None:
    """A 422 naming `url` when the sync would refuse it: embedded credentials, or an address the SSRF
    guard refuses (as integrations' URLs on save). A host that does not resolve now is left to the sync."""
    try:
        check_url_shape(url)
    except ConfigurationError as exc:
        raise Unprocessable(str(exc), field="url") from None
    refusal = await save_time_refusal(UrlGuard(settings.allow_private_urls, https_only=False), url)
    if refusal is not None:
        raise Unprocessable(refusal, field="url")


def _refuse_foreign_s3(settings: Settings, section_id: str, body: FeedIn) -> None:
    """A 422 naming `source`, `s3_bucket` or `s3_key` when the location is not one the section may read
    (`domain/feed_source.py`): s3 feeds are read with Rejoin's own credentials."""
    refusal = s3_feed_refusal(
        settings.feed_buckets, settings.subscriber_bucket, section_id, body.s3_bucket or "", body.s3_key or ""
    )
    if refusal is not None:
        raise Unprocessable(refusal[1], field=refusal[0])


@router.post("/feeds", status_code=201)
async def create_feed(body: FeedIn, principal: Management, state: StateDep) -> FeedOut:
    if body.source == "url" and body.url:
        await _refuse_internal_url(state.settings, body.url)
    if body.source == "s3":
        _refuse_foreign_s3(state.settings, principal.section_id, body)
    feed = Feed(
        id="feed_" + secrets.token_hex(6), section_id=principal.section_id, kind=body.kind, name=body.name,
        source=body.source, url=body.url, s3_bucket=body.s3_bucket, s3_key=body.s3_key,
        sync_every_seconds=int(body.sync_every.total_seconds()) if body.sync_every else None, created_at=now_utc(),
        mode=body.mode,
    )  # fmt: skip

    def save() -> None:
        with state.store.session() as s:
            s.add(feed)

    # Temporal unreachable: refused before the feed is saved, so the request can simply be repeated.
    client = await state.client() if body.sync_every is not None else None
    await asyncio.to_thread(save)
    if client is not None and body.sync_every is not None:
        then = f"the feed {feed.id} was saved without it: it syncs only when asked (POST /api/v1/feeds/{feed.id}/sync)"
        async with calling_temporal("create the feed's sync schedule", then):
            await client.create_schedule(
                feed_sync_id(feed.section_id, feed.id),
                Schedule(
                    action=ScheduleActionStartWorkflow(
                        FeedSyncWorkflow.run,
                        _sync_input(state.settings, feed),
                        id=feed_sync_id(feed.section_id, feed.id),
                        task_queue=state.settings.task_queue,
                    ),  # fmt: skip
                    spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=body.sync_every)]),
                    policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
                ),
            )
    return FeedOut(**feed.model_dump())


def _running_sync_id(store: Store, feed_id: str, wid: str) -> str | None:
    """The sync of the feed still `running` to name in a 409: the one workflow `wid` drives (its row
    records it), else the newest (a row begun before workflow ids were kept). Not a row left `running`
    by a terminated workflow just because it is newer."""
    with store.session() as s:
        q = (
            select(FeedSync)
            .where(FeedSync.feed_id == feed_id, FeedSync.state == "running")
            .order_by(col(FeedSync.started_at).desc())
        )
        sync = (
            s.exec(q.where(FeedSync.workflow_id == wid)).first()
            or s.exec(q.where(col(FeedSync.workflow_id).is_(None))).first()
        )
    return sync.id if sync is not None else None


async def _sync_running(state: StateDep, feed: Feed, wid: str) -> Conflict:
    sync_id = await asyncio.to_thread(_running_sync_id, state.store, feed.id, wid)
    which = f"sync {sync_id} (workflow {wid})" if sync_id else f"its sync (workflow {wid})"
    return Conflict(
        f"the feed {feed.id} is syncing: {which} is still running; a feed syncs one file at a time, "
        f"so repeat the request once it ended (GET /api/v1/feeds/{feed.id})"
    )


async def _refuse_while_syncing(state: StateDep, client: Client, feed: Feed, *, own: bool) -> None:
    """409 when a sync of the feed is running: `own`, one the API started (checked before an upload
    is read, so it is not stored for nothing; `_start_sync` refuses that case atomically anyway,
    through the workflow id), and one its `sync_every` schedule started."""
    wids = [feed_sync_now_id(feed.section_id, feed.id)] if own else []
    async with calling_temporal("check the feed's running sync"):
        if feed.sync_every_seconds is not None:
            try:
                described = await client.get_schedule_handle(feed_sync_id(feed.section_id, feed.id)).describe()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
            else:
                wids += [
                    a.workflow_id for a in described.info.running_actions
                    if isinstance(a, ScheduleActionExecutionStartWorkflow)
                ]
        for wid in wids:
            if await run_ended(client, wid) is None:
                raise await _sync_running(state, feed, wid)


async def _start_sync(
    state: StateDep, feed: Feed, object_key: str | None, force: bool, refetch: bool = False
) -> SyncStarted:
    client = await state.client()
    if feed.sync_every_seconds is not None:
        await _refuse_while_syncing(state, client, feed, own=False)
    wid = feed_sync_now_id(feed.section_id, feed.id)
    try:
        async with calling_temporal("start the feed's sync"):
            handle = await client.start_workflow(
                FeedSyncWorkflow.run, _sync_input(state.settings, feed, object_key, force, refetch), id=wid,
                task_queue=state.settings.task_queue, static_summary=f"{feed.kind} feed {feed.name}",
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )  # fmt: skip
    except WorkflowAlreadyStartedError:
        # Another request started one since the check: this file is not applied (its object is
        # pruned with the feed's other unused uploads, activities/feeds.py: prune_uploads).
        raise await _sync_running(state, feed, wid) from None
    return SyncStarted(workflow_id=wid, run_id=handle.result_run_id or "")


@router.put("/feeds/{feed_id}/file", status_code=202)
async def upload_feed(
    feed_id: str, request: Request, principal: Management, state: StateDep, force: bool = FORCE
) -> SyncStarted:
    """Upload the feed's CSV (request body, streamed; never held whole in memory) and sync it. 409
    while a sync of the feed runs, and for a feed that reads its URL or S3 location."""
    feed = await asyncio.to_thread(_feed, state.store, principal.section_id, feed_id)
    if feed.source != "upload":
        # Its next sync (scheduled or POST .../sync) would read the URL / S3 file again anyway.
        where = "its URL" if feed.source == "url" else "its S3 location"
        raise Conflict(
            f"the feed {feed.id} has source {feed.source}: it reads {where} (POST /api/v1/feeds/{feed.id}/sync); "
            "uploading a file is for feeds with source upload"
        )
    await _refuse_while_syncing(state, await state.client(), feed, own=True)
    # A key of its own, never rewritten; the feed's older uploads are deleted once their syncs ended
    # (activities/feeds.py: prune_uploads).
    key = objects.upload_key(feed.section_id, feed.id, now_utc())
    with tempfile.SpooledTemporaryFile(max_size=UPLOAD_SPOOL) as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            await asyncio.to_thread(spool.write, chunk)
        if size == 0:
            raise Unprocessable("the file is empty", field="body")
        spool.seek(0)

        try:
            await asyncio.to_thread(objects.uploads(state.settings).put, key, spool)
        except objects.ObjectStoreUnavailable as exc:
            # A configured S3 that is down or refuses the keys: the operator's problem, said as such.
            raise Unavailable(str(exc)) from exc
    return await _start_sync(state, feed, key, force)


@router.post("/feeds/{feed_id}/sync", status_code=202)
async def sync_feed(
    feed_id: str, principal: Management, state: StateDep, force: bool = FORCE, refetch: bool = REFETCH
) -> SyncStarted:
    """Sync now from the feed's URL or S3 location. A URL feed's file unchanged since the last applied
    sync (the server answers 304 to a conditional GET) ends the sync `unchanged`; `refetch` reads it whole."""
    feed = await asyncio.to_thread(_feed, state.store, principal.section_id, feed_id)
    if feed.source == "upload":
        raise Unprocessable("an upload feed syncs when a file is uploaded (PUT .../file)", field="path.feed_id")
    return await _start_sync(state, feed, None, force, refetch)


def _status(store: Store, feed: Feed, limit: int, rejections: int) -> FeedStatus:
    with store.session() as s:
        syncs = s.exec(
            select(FeedSync)
            .where(FeedSync.feed_id == feed.id)
            .order_by(col(FeedSync.started_at).desc())
            .limit(limit)
        ).all()
        out = []
        for sync in syncs:
            rows = s.exec(
                select(FeedRejection)
                .where(FeedRejection.sync_id == sync.id)
                .order_by(col(FeedRejection.line))
                .limit(rejections)
            ).all()
            out.append(
                FeedSyncOut(
                    **sync.model_dump(exclude={"feed_id", "section_id", "object_key", "duplicate_keys"}),
                    duplicate_keys=sync.duplicate_keys or [],
                    rejections=[Rejection(line=r.line, reason=r.reason) for r in rows],
                )
            )
        return FeedStatus(feed=FeedOut(**feed.model_dump()), syncs=out)


@router.get("/feeds/{feed_id}")
async def feed_status(
    feed_id: str,
    principal: Management,
    state: StateDep,
    limit: int = Query(10, ge=1, le=100),
    rejections: int = Query(100, ge=0, le=10_000),
) -> FeedStatus:
    feed = await asyncio.to_thread(_feed, state.store, principal.section_id, feed_id)
    return await asyncio.to_thread(_status, state.store, feed, limit, rejections)


def _pending_counts(s: Session, run_id: str) -> tuple[int, int, int]:
    """(pending, waiting for the window, waiting to retry): one pass over the run's pending rows
    (index `ix_broadcast_pending`: run, status)."""
    waiting = col(BroadcastRecipient.not_before).is_not(None)

    def waiting_for(prefix: str) -> ColumnElement[Any]:
        reason = col(BroadcastRecipient.reason).startswith(prefix, autoescape=True)
        return func.coalesce(func.sum(case((waiting & reason, 1), else_=0)), 0)

    q = select(func.count(), waiting_for(WINDOW_REASON), waiting_for(RETRY_REASON)).where(
        BroadcastRecipient.run_id == run_id, BroadcastRecipient.status == "pending"
    )
    pending, window, retry = s.exec(q).one()
    return int(pending), int(window), int(retry)


def _failed_sends(s: Session, run_id: str) -> tuple[int, int]:
    """(failed sends, of which possibly delivered) of the run's recipients, from their journey rows
    (workflow `broadcast/<run>`, indexed) and the sends of those journeys (`journey_id`, indexed).
    Not by the sends' key prefix `bcast:<run>:`: a range on the primary key matches the prefix only
    under a byte-order collation, which a PostgreSQL database need not have."""
    maybe = case((col(Send.possible_duplicate) == True, 1), else_=0)  # noqa: E712
    q = (
        select(func.count(), func.coalesce(func.sum(maybe), 0))
        .select_from(Journey)
        .join(Send, col(Send.journey_id) == col(Journey.id))
        .where(col(Journey.workflow_id) == broadcast_workflow_id(run_id), col(Send.status) == "failed")
    )
    failed, possibly = s.exec(q).one()
    return int(failed), int(possibly)


def _skipped_by_reason(s: Session, run_id: str) -> dict[str, int]:
    """The run's skipped recipients counted by reason code: its reasons are "code" or "code: detail"
    (`activities/broadcast.py::_prepare`), grouped by the whole text in the store (index
    `ix_broadcast_pending`: run, status), then by code here (the details, a campaign or cap, vary)."""
    q = (
        select(BroadcastRecipient.reason, func.count())
        .where(BroadcastRecipient.run_id == run_id, BroadcastRecipient.status == "skipped")
        .group_by(col(BroadcastRecipient.reason))
    )
    out: dict[str, int] = {}
    for reason, count in s.exec(q).all():
        code = (reason or "").split(":", 1)[0].strip() or "unknown"
        out[code] = out.get(code, 0) + int(count)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _run_out(store: Store, section_id: str, run_id: str) -> RunOut:
    with store.session() as s:
        run = s.get(BroadcastRun, run_id)
        if run is None or run.section_id != section_id:
            raise NotFound("no such run", field="run_id")
        pending, window, retry = _pending_counts(s, run.id)
        failed_sends, possibly_delivered = _failed_sends(s, run.id)
        return RunOut(
            **run.model_dump(exclude={"section_id", "source_id", "deferred"}),
            pending=pending, waiting_for_window=window, waiting_to_retry=retry, failed_sends=failed_sends,
            possibly_delivered=possibly_delivered, skipped_by_reason=_skipped_by_reason(s, run.id),
            workflow_id=broadcast_workflow_id(run.id),
        )  # fmt: skip


@router.get("/runs/{run_id}")
async def get_run(run_id: str, principal: Management, state: StateDep) -> RunOut:
    """Progress of a batched campaign run (counts come from the recipients' final statuses)."""
    return await asyncio.to_thread(_run_out, state.store, principal.section_id, run_id)


@router.get("/campaigns/{campaign_id}/runs")
async def list_runs(campaign_id: str, principal: Management, state: StateDep) -> list[RunOut]:
    def ids() -> list[str]:
        with state.store.session() as s:
            campaign = s.get(Campaign, campaign_id)
            if campaign is None or campaign.section_id != principal.section_id:
                raise NotFound("no such campaign", field="campaign_id")  # as every campaign route
            q = select(BroadcastRun.id).where(
                BroadcastRun.section_id == principal.section_id, BroadcastRun.campaign_id == campaign_id
            )
            return list(s.exec(q.order_by(col(BroadcastRun.created_at).desc()).limit(50)).all())

    return [
        await asyncio.to_thread(_run_out, state.store, principal.section_id, i)
        for i in await asyncio.to_thread(ids)
    ]


@router.post("/campaigns/{campaign_id}/runs", status_code=202)
async def start_scheduled_run(campaign_id: str, principal: Management, state: StateDep) -> RunOut:
    """Start a run of an active scheduled campaign: it sends at the campaign's schedule.

    The run is named after the slot it sends at, as the Temporal Schedule names its fires: a
    one-off campaign (`send_at`) has one run, and a recurring one's next slot started by hand is
    the run the schedule finds when that slot fires (it sent that slot's message twice, once per
    run); starting the same slot by hand again finds it too. Nobody gets one slot twice."""

    def create() -> BroadcastRun:
        with state.store.session() as s:
            campaign = s.get(Campaign, campaign_id)
            if campaign is None or campaign.section_id != principal.section_id:
                raise NotFound("no such campaign", field="campaign_id")
            spec = load_spec(s, campaign.id, campaign.version)
            if spec.type != CampaignType.SCHEDULED:
                raise Unprocessable("only scheduled campaigns are started by hand", field="path.campaign_id")
            if campaign.status != "active":
                raise Unprocessable("activate the campaign first", field="path.campaign_id")
            now = now_utc()
            once = spec.schedule.send_at if spec.schedule is not None else None
            run_id = scheduled_run_id(campaign.id, once if once is not None else send_time(spec, now))
            existing = s.get(BroadcastRun, run_id)
            if existing is not None:
                return existing
            run = BroadcastRun(
                id=run_id, section_id=campaign.section_id, campaign_id=campaign.id,
                campaign_version=campaign.version, reason="schedule", state="waiting", send_at=send_time(spec, now),
                created_at=now,
            )  # fmt: skip
            s.add(run)
            return run

    run = await asyncio.to_thread(create)
    client = await state.client()
    try:
        async with calling_temporal("start the run", f"run {run.id} is recorded; repeat the request to start it"):
            await client.start_workflow(
                BroadcastWorkflow.run,
                BroadcastInput(
                    run_id=run.id, section_id=run.section_id, campaign_id=run.campaign_id, send_at=run.send_at,
                    shards=state.settings.broadcast_shards, plan_scheduled=True,
                ),
                id=broadcast_workflow_id(run.id),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                task_queue=state.settings.task_queue,
                static_summary=f"scheduled campaign {run.campaign_id}: run {run.id}",
            )  # fmt: skip
    except WorkflowAlreadyStartedError:
        pass  # the schedule (or an earlier request) already drives this run
    return await asyncio.to_thread(_run_out, state.store, principal.section_id, run.id)
