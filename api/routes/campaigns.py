"""Campaigns: create, read, update (new version), validate, activate, pause, archive.

The body of create/update is the campaign spec (`domain/campaign.py`); a bad spec gets a 422
whose `detail[].loc` names the field. Updating an active campaign's spec creates a new version:
journeys in flight keep the version they started with.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel
from sqlmodel import Session, col, select
from temporalio.service import RPCError

from activities.broadcast import ENDED_UNSENT, off_schedule
from api import campaign_schedules
from api.campaign_schedules import ScheduleOut
from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unavailable
from api.temporal_errors import CALL_TIMEOUT_SECONDS, calling_temporal, safe_reason
from domain.campaign import STORED, CampaignSpec, CampaignType
from store.broadcast_tables import BroadcastRun
from store.campaigns import forget_live, load_spec
from store.tables import Campaign, CampaignVersion, now_utc
from workflows.broadcast import BroadcastWorkflow
from workflows.ids import broadcast_workflow_id, scheduled_run_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])

# status -> statuses it may move to
TRANSITIONS: dict[str, set[str]] = {
    "draft": {"active", "archived"},
    "active": {"paused", "archived"},
    "paused": {"active", "archived"},
    "archived": set(),
}


class CampaignPublic(BaseModel):
    id: str
    name: str
    type: str
    status: str
    priority: int
    version: int
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    schedule: ScheduleOut | None = None  # recurring scheduled campaigns: their Temporal Schedule
    schedule_error: str | None = None  # the schedule could not be read (Temporal unreachable)
    # Pause/archive: batched runs still sending, whose recipients not yet sent are skipped for good;
    # update: runs started for a slot the edit moved or removed, which will not send
    warnings: list[str] = []


class Validated(BaseModel):
    valid: bool
    spec: dict[str, Any]


def _public(s: Session, c: Campaign) -> CampaignPublic:
    spec = load_spec(s, c.id, c.version)
    return CampaignPublic(**c.model_dump(), spec=spec.model_dump(mode="json"))


def _own(s: Session, section_id: str, campaign_id: str) -> Campaign:
    c = s.get(Campaign, campaign_id)
    if c is None or c.section_id != section_id:
        raise NotFound("no such campaign", field="campaign_id")
    return c


def _check_templates(state: StateDep, section_id: str, spec: CampaignSpec) -> None:
    from api.routes.templates import check_campaign_templates  # saved templates referenced by id

    with state.store.session() as s:
        check_campaign_templates(s, section_id, spec)


@router.post("/validate")
def validate(spec: CampaignSpec, principal: Management, state: StateDep) -> Validated:
    """Validate a spec without saving it (422 with the field at fault when invalid)."""
    _check_templates(state, principal.section_id, spec)
    return Validated(valid=True, spec=spec.model_dump(mode="json"))


async def _synced(state: StateDep, section_id: str, out: CampaignPublic) -> CampaignPublic:
    """After a committed change: make the campaign's Temporal Schedule match, then show it."""
    forget_live(section_id)  # ingestion in this process sees the change from the next request on
    spec = CampaignSpec.model_validate(out.spec, context={STORED: True})
    if out.type != CampaignType.SCHEDULED or (not campaign_schedules.has_schedule(spec) and out.version == 1):
        return out  # never had a schedule: none to create or delete (and no need for Temporal)
    client = await state.client()
    saved = "the campaign was saved; repeat the request"
    async with calling_temporal("update the campaign's Temporal Schedule", saved):
        await campaign_schedules.sync(client, state.settings, section_id, out.id, spec, out.status)
    out.warnings += await asyncio.to_thread(_send_at_passed, state, out, spec)
    return await _with_schedule(state, section_id, out)


def _send_at_passed(state: StateDep, out: CampaignPublic, spec: CampaignSpec) -> list[str]:
    """An active one-off campaign whose `send_at` has passed with no run for it: its schedule fires
    no more (a trial's activate answered 200, no warning, no next fire, and nothing was sent)."""
    once = spec.schedule.send_at if spec.schedule is not None else None
    if out.status != "active" or once is None or once > now_utc():
        return []
    with state.store.session() as s:
        if s.get(BroadcastRun, scheduled_run_id(out.id, once)) is not None:
            return []  # it fired (or was started by hand): that run is the campaign's one
    return [
        f"send_at {once.isoformat()} has passed: no run fires; start it now with POST /api/v1/campaigns/{out.id}/runs"
    ]


async def _with_schedule(state: StateDep, section_id: str, out: CampaignPublic) -> CampaignPublic:
    if campaign_schedules.has_schedule(CampaignSpec.model_validate(out.spec, context={STORED: True})) and out.status != "archived":
        try:
            client = await state.client()
            out.schedule = await campaign_schedules.describe(client, section_id, out.id)
        except (RPCError, Unavailable) as err:
            # Reading a campaign never fails because Temporal is down; say what is unknown.
            out.schedule_error = f"Temporal Schedule unavailable: {safe_reason(err)}"[:300]
    return out


@router.post("", status_code=201)
async def create(spec: CampaignSpec, principal: Management, state: StateDep) -> CampaignPublic:
    await asyncio.to_thread(_check_templates, state, principal.section_id, spec)
    out = await asyncio.to_thread(_insert, state, principal.section_id, spec)
    return await _synced(state, principal.section_id, out)


def _insert(state: StateDep, section_id: str, spec: CampaignSpec) -> CampaignPublic:
    now = now_utc()
    with state.store.session() as s:
        c = Campaign(
            id="cmp_" + secrets.token_hex(6),
            section_id=section_id,
            name=spec.name,
            type=spec.type.value,
            priority=spec.priority,
            created_at=now,
            updated_at=now,
        )
        s.add(c)
        s.flush()
        s.add(CampaignVersion(campaign_id=c.id, version=1, spec=spec.model_dump(mode="json"), created_at=now))
        s.flush()
        return _public(s, c)


@router.get("")
async def list_campaigns(
    principal: Management, state: StateDep, status: Literal["draft", "active", "paused", "archived"] | None = None
) -> list[CampaignPublic]:
    def load() -> list[CampaignPublic]:
        with state.store.session() as s:
            q = select(Campaign).where(Campaign.section_id == principal.section_id)
            if status:
                q = q.where(Campaign.status == status)
            return [_public(s, c) for c in s.exec(q.order_by(col(Campaign.created_at))).all()]

    return [await _with_schedule(state, principal.section_id, c) for c in await asyncio.to_thread(load)]


@router.get("/{campaign_id}")
async def get(campaign_id: str, principal: Management, state: StateDep) -> CampaignPublic:
    def load() -> CampaignPublic:
        with state.store.session() as s:
            return _public(s, _own(s, principal.section_id, campaign_id))

    return await _with_schedule(state, principal.section_id, await asyncio.to_thread(load))


@router.get("/{campaign_id}/versions/{version}")
def get_version(
    campaign_id: str, version: Annotated[int, Path(ge=1, le=2**31 - 1)], principal: Management, state: StateDep
) -> dict[str, Any]:
    with state.store.session() as s:
        _own(s, principal.section_id, campaign_id)
        row = s.exec(
            select(CampaignVersion).where(CampaignVersion.campaign_id == campaign_id, CampaignVersion.version == version)
        ).first()
        if row is None:
            raise NotFound("no such version", field="version")
        return {"version": row.version, "spec": row.spec, "created_at": row.created_at}


@router.put("/{campaign_id}")
async def update(campaign_id: str, spec: CampaignSpec, principal: Management, state: StateDep) -> CampaignPublic:
    await asyncio.to_thread(_check_templates, state, principal.section_id, spec)
    out = await asyncio.to_thread(_new_version, state, principal.section_id, campaign_id, spec)
    return await _synced(state, principal.section_id, out)


def _new_version(state: StateDep, section_id: str, campaign_id: str, spec: CampaignSpec) -> CampaignPublic:
    with state.store.session() as s:
        c = _own(s, section_id, campaign_id)
        if c.status == "archived":
            raise Conflict("an archived campaign cannot be changed", field="status")
        if spec.type.value != c.type:
            raise Conflict("a campaign's type cannot change; create a new campaign", field="type")
        if spec != load_spec(s, c.id, c.version):
            now = now_utc()
            c.version += 1
            c.name, c.priority, c.updated_at = spec.name, spec.priority, now
            s.add(CampaignVersion(campaign_id=c.id, version=c.version, spec=spec.model_dump(mode="json"), created_at=now))
            s.add(c)
            s.flush()
            warnings = _runs_off_schedule(s, c, spec)
        else:
            warnings = []
        public = _public(s, c)
        public.warnings = warnings
        return public


def _runs_off_schedule(s: Session, c: Campaign, spec: CampaignSpec) -> list[str]:
    """Runs started for a slot this edit moved or removed (by hand, or a fire not yet sending): when
    they wake they end `superseded`, unsent (`activities.broadcast.off_schedule`); say so. A run
    whose slot remains sends the latest version then. Not ended now: an edit back before the slot
    would have found its run ended."""
    waiting = [run for run in _open_runs(s, c.id) if _awaiting_slot(run)]
    again = "" if campaign_schedules.has_schedule(spec) else f"; start the new slot with POST /campaigns/{c.id}/runs"
    out = []
    for run in waiting:
        refused = off_schedule(run, c, spec)
        if refused is not None and refused[0] == "superseded" and run.send_at is not None:
            out.append(
                f"batched run {run.id} for {run.send_at.isoformat()} will not send: {refused[1]} "
                f"(it ends superseded at that time){again}"
            )
    return out


async def _transition(state: StateDep, section_id: str, campaign_id: str, to: str) -> CampaignPublic:
    stopping: list[str] = []  # the open batched runs a pause or archive ends (`_signal_runs_stopped`)

    def move() -> CampaignPublic:
        with state.store.session() as s:
            c = _own(s, section_id, campaign_id)
            warnings: list[str] = []
            if c.status != to:
                if to not in TRANSITIONS[c.status]:
                    raise Conflict(f"cannot go from {c.status} to {to}", field="status")
                c.status, c.updated_at = to, now_utc()
                s.add(c)
                if to != "active":
                    runs = _open_runs(s, c.id)
                    warnings = _runs_cut_short(runs, to)
                    stopping.extend(run.id for run in runs if not _awaiting_slot(run))
            public = _public(s, c)
            public.warnings = warnings
            return public

    public = await asyncio.to_thread(move)
    await _signal_runs_stopped(state, stopping, f"campaign_{to}")
    # Also when the status did not change: repeating the request repairs a schedule sync that failed.
    return await _synced(state, section_id, public)


def _open_runs(s: Session, campaign_id: str) -> list[BroadcastRun]:
    """The campaign's batched runs not ended. A pause or archive signals those that listed their
    recipients to end (`_signal_runs_stopped`); a run still waiting for its slot is left alone: it
    checks the campaign's status when it wakes (`activities.broadcast.off_schedule`), so a campaign
    activated again before the slot sends at it."""
    return list(
        s.exec(
            select(BroadcastRun).where(
                BroadcastRun.campaign_id == campaign_id, col(BroadcastRun.state).not_in(("done", *ENDED_UNSENT))
            )
        ).all()
    )


def _awaiting_slot(run: BroadcastRun) -> bool:
    """A scheduled run that has not listed its recipients yet: it sleeps until its `send_at`."""
    return run.state == "waiting" and not run.total and run.send_at is not None


async def _signal_runs_stopped(state: StateDep, run_ids: list[str], reason: str) -> None:
    """Tell the campaign's open runs it was paused or archived (workflows/broadcast.py `campaign_stopped`):
    a shard sleeping out a vendor's Retry-After (up to an hour) or a send window wakes and ends the
    run now, and an activation does not resume it. Best effort, after the change committed: a run
    not told (Temporal unreachable, the run ended meanwhile) ends at its next batch, when a shard
    wakes, if the campaign is still paused then (docs/audience.md)."""
    if not run_ids:
        return
    try:
        async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
            client = await state.client()
            for run_id in run_ids:
                handle = client.get_workflow_handle(broadcast_workflow_id(run_id))
                try:
                    await handle.signal(BroadcastWorkflow.campaign_stopped, reason)
                except RPCError as err:  # ended meanwhile (or never started): nothing to stop
                    log.info("run %s not told of %s: %s", run_id, reason, safe_reason(err))
    except (RPCError, Unavailable, TimeoutError) as err:
        log.warning("runs %s not told of %s (they end at their next batch): %s", run_ids, reason, err)


def _runs_cut_short(runs: list[BroadcastRun], to: str) -> list[str]:
    """Batched runs of the campaign not done yet (`_open_runs`): a journey's later steps send again after
    a resume, but a run's recipients not yet sent are skipped (`campaign_paused`) and the run ends: say so."""
    out = []
    for run in runs:
        if _awaiting_slot(run) and run.send_at is not None:
            # Not listed yet: checked when it wakes (`activities.broadcast.off_schedule`).
            out.append(
                f"batched run {run.id} (waiting for {run.send_at.isoformat()}): it sends nothing when it wakes "
                "(at that time, or later if no worker runs then; it ends cancelled) unless the campaign is "
                "active again by then"
            )
            continue
        left = max(0, run.total - run.sent - run.skipped - run.failed)
        whom = f"its {left} recipients not yet sent" if run.total else "its recipients"
        out.append(
            f"batched run {run.id} ({run.state}): {whom} will be skipped (campaign_{to}); "
            "a run does not resume on activate"
        )
    return out


@router.post("/{campaign_id}/activate")
async def activate(campaign_id: str, principal: Management, state: StateDep) -> CampaignPublic:
    return await _transition(state, principal.section_id, campaign_id, "active")


@router.post("/{campaign_id}/pause")
async def pause(campaign_id: str, principal: Management, state: StateDep) -> CampaignPublic:
    return await _transition(state, principal.section_id, campaign_id, "paused")


@router.post("/{campaign_id}/archive")
async def archive(campaign_id: str, principal: Management, state: StateDep) -> CampaignPublic:
    return await _transition(state, principal.section_id, campaign_id, "archived")
