"""Stopping journeys (operators): `POST /api/v1/journeys/{id}/exit` ends one journey,
`POST /api/v1/campaigns/{id}/journeys/exit` every active journey of a campaign (pause and archive
only skip their steps: docs/campaigns.md). Each running journey is sent the `exit` signal (reason
`operator_stopped`), the same an ingested "don't send if" event sends; a journey whose workflow is
no longer running (terminated in the Temporal UI, failed) has its store row ended instead.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlmodel import col, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from api.deps import Management, StateDep
from api.errors import Conflict, NotFound
from api.ingestion import EXIT_WAITS_FOR_START
from api.journeys import exit_journey, journey_id_of_run, latest_run
from api.temporal_errors import calling_temporal, safe_reason
from store import journey_rows
from store.tables import Campaign, Journey, now_utc
from workflows.journey import JourneyWorkflow
from workflows.models import ExitSignal

router = APIRouter(prefix="/api/v1", tags=["journeys"])
log = logging.getLogger(__name__)


OPERATOR_STOPPED = "operator_stopped"  # the exit reason of journeys stopped through these routes
STOP_CONCURRENCY = 50  # journeys signalled at once by a campaign-wide stop
STOP_PAGE = 500  # active rows read per page by a campaign-wide stop
STOP_FAILURES_LISTED = 100  # failed journeys a campaign-wide stop names (all are counted)

StopOutcome = Literal["signalled", "ended_in_store", "start_pending", "already_ended"]


class StopOut(BaseModel):
    """`outcome`: `signalled` (the running journey was sent the exit: it records `exited`,
    reason `operator_stopped`, within moments) or `ended_in_store` (its workflow no longer ran:
    the row was ended here). `status`/`exit_reason`: the row as it is when the call returns."""

    journey_id: str
    outcome: StopOutcome
    status: str
    exit_reason: str | None


class StopFailure(BaseModel):
    """A journey a campaign-wide stop could not stop: Temporal (or the store) failed on it."""

    journey_id: str
    reason: str


class CampaignStopOut(BaseModel):
    """Counts over the campaign's journeys active when the call read them: `signalled` running
    journeys sent the exit, `ended_in_store` rows ended because no workflow ran them any more,
    `start_pending` journeys whose start has not reached Temporal yet (send the call again),
    `already_ended` journeys that ended on their own meanwhile, `failed` journeys not stopped
    because a call for them failed (`failures`: the first 100, each with the error; send the call
    again). Answered with 503 when `failed` is not 0."""

    campaign_id: str
    signalled: int = 0
    ended_in_store: int = 0
    start_pending: int = 0
    already_ended: int = 0
    failed: int = 0
    failures: list[StopFailure] = []


@dataclass(frozen=True)
class _Active:
    """An active journey row, as much of it as stopping needs."""

    id: str
    workflow_id: str
    triggered_at: datetime


def _operator_exit() -> ExitSignal:
    # A fresh event id per call: the journey ignores an exit event id it has seen.
    return ExitSignal(event_id="operator_" + secrets.token_hex(8), reason=OPERATOR_STOPPED)


async def _journey_of_run(client: Client, workflow_id: str, run_id: str | None, running: bool) -> str | None:
    """The journey a run runs or ran: from its start input, else (a run that enrolled itself: a
    preview, a re-trigger after an operator ended a journey) by asking it if it runs (a query to a
    closed run would replay it); None if unknown."""
    ran = await journey_id_of_run(client, workflow_id, run_id)
    if ran is not None or not running:
        return ran
    try:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        view = await asyncio.wait_for(handle.query(JourneyWorkflow.current_state), timeout=5)
        return view.journey_id
    except Exception:  # no worker to answer, timeout: cannot tell
        return None


async def _latest_run_journey(client: Client, workflow_id: str) -> tuple[bool, str | None] | None:
    """The workflow id's latest run: (running, the journey it runs or ran); None if it never ran."""
    desc = await latest_run(client.get_workflow_handle(workflow_id))
    if desc is None:
        return None
    running = desc.status == WorkflowExecutionStatus.RUNNING
    return running, await _journey_of_run(client, workflow_id, desc.run_id, running)


async def _stop(state: StateDep, client: Client, row: _Active) -> StopOutcome:
    """Stop one active journey: signal its running workflow, else end its row.

    A person's journeys of a campaign share a workflow id, so the run found is checked to be this
    journey's. A row whose workflow never ran, or whose latest run is another journey's, may be a
    start still on its way to Temporal (ending the row would not stop it): it is ended only when
    older than ingestion's wait for such starts (`EXIT_WAITS_FOR_START`)."""
    latest = await _latest_run_journey(client, row.workflow_id)
    if latest is not None:
        running, journey_id = latest
        ours = journey_id in (row.id, None)  # None: a run that cannot tell is taken to be this one
        if running and ours and await exit_journey(client, row.workflow_id, _operator_exit()):
            return "signalled"
        if not ours and not running and now_utc() - row.triggered_at < EXIT_WAITS_FOR_START:
            return "start_pending"
    elif now_utc() - row.triggered_at < EXIT_WAITS_FOR_START:
        return "start_pending"
    ended = await asyncio.to_thread(_end_row, state, row.id)
    return "ended_in_store" if ended else "already_ended"


def _end_row(state: StateDep, journey_id: str) -> bool:
    with state.store.session() as s:
        return journey_rows.end_if_active(s, journey_id, "exited", OPERATOR_STOPPED, now_utc())


def _journey_row(state: StateDep, section_id: str, journey_id: str) -> Journey:
    with state.store.session() as s:
        row = s.get(Journey, journey_id)
        if row is None or row.section_id != section_id:
            raise NotFound("no such journey", field="journey_id")
        s.expunge(row)
        return row


@router.post("/journeys/{journey_id}/exit")
async def stop_journey(journey_id: str, principal: Management, state: StateDep) -> StopOut:
    """Stop one journey: no step of it not yet handed to a provider is sent (docs/operations.md).

    409 if the journey has ended already, or if its start has not reached Temporal yet (try again)."""
    row = await asyncio.to_thread(_journey_row, state, principal.section_id, journey_id)
    if row.status != "active":
        raise Conflict(f"the journey has ended already ({row.status}, {row.exit_reason})", field="journey_id")
    client = await state.client()
    async with calling_temporal("stop the journey", "send the exit again"):
        outcome = await _stop(state, client, _Active(row.id, row.workflow_id, row.triggered_at))
    if outcome == "start_pending":
        raise Conflict("the journey's start has not reached Temporal yet; send the exit again", field="journey_id")
    after = await asyncio.to_thread(_journey_row, state, principal.section_id, journey_id)
    if outcome == "already_ended":  # it ended on its own between the read and the stop
        raise Conflict(f"the journey has ended already ({after.status}, {after.exit_reason})", field="journey_id")
    return StopOut(journey_id=row.id, outcome=outcome, status=after.status, exit_reason=after.exit_reason)


def _campaign_exists(state: StateDep, section_id: str, campaign_id: str) -> None:
    with state.store.session() as s:
        campaign = s.get(Campaign, campaign_id)
        if campaign is None or campaign.section_id != section_id:
            raise NotFound("no such campaign", field="campaign_id")


def _active_page(state: StateDep, section_id: str, campaign_id: str, after: str) -> list[_Active]:
    """The campaign's active journeys with an id after `after`, a page in id order (keyset)."""
    with state.store.session() as s:
        rows = s.exec(
            select(Journey.id, Journey.workflow_id, Journey.triggered_at)
            .where(Journey.section_id == section_id, Journey.campaign_id == campaign_id, Journey.status == "active",
                   col(Journey.id) > after)
            .order_by(col(Journey.id))
            .limit(STOP_PAGE)
        ).all()  # fmt: skip
        return [_Active(*r) for r in rows]


def _failure(row: _Active, err: Exception) -> StopFailure:
    log.warning("campaign-wide stop: journey %s (%s) not stopped", row.id, row.workflow_id, exc_info=err)
    # Temporal's own message stays in the log (it can name its hosts); the caller gets its status.
    reason = safe_reason(err) if isinstance(err, RPCError) else f"{type(err).__name__}: {err}"
    return StopFailure(journey_id=row.id, reason=reason[:300])


def _count(out: CampaignStopOut, result: StopOutcome | StopFailure) -> None:
    if isinstance(result, StopFailure):
        out.failed += 1
        if len(out.failures) < STOP_FAILURES_LISTED:
            out.failures.append(result)
    else:
        setattr(out, result, getattr(out, result) + 1)


@router.post(
    "/campaigns/{campaign_id}/journeys/exit",
    responses={503: {"model": CampaignStopOut, "description": "some journeys were not stopped (`failures`)"}},
)
async def stop_campaign_journeys(
    campaign_id: str, principal: Management, state: StateDep, response: Response
) -> CampaignStopOut:
    """Stop every active journey of the campaign at once (e.g. after archiving it, whose journeys
    would otherwise run to their end skipping their steps). Journeys triggered after the call are
    not stopped: pause or archive the campaign first so no new one starts.

    A journey whose stop fails (a Temporal error) does not stop the others: it is counted in
    `failed` and named in `failures`, and the answer is 503 with the same body (send it again)."""
    await asyncio.to_thread(_campaign_exists, state, principal.section_id, campaign_id)
    client = await state.client()
    out = CampaignStopOut(campaign_id=campaign_id)
    gate = asyncio.Semaphore(STOP_CONCURRENCY)

    async def stop(row: _Active) -> StopOutcome | StopFailure:
        async with gate:
            try:
                return await _stop(state, client, row)
            except Exception as err:  # an error on one journey must not hide what was done to the others
                return _failure(row, err)

    after = ""
    while page := await asyncio.to_thread(_active_page, state, principal.section_id, campaign_id, after):
        for result in await asyncio.gather(*(stop(r) for r in page)):
            _count(out, result)
        after = page[-1].id
    if out.failed:
        response.status_code = 503
    return out
