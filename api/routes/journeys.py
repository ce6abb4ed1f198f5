"""Journeys for operators: a user's journeys, their live state and decision trace; stopping them.

"Why did this user get nothing?" is answered by `GET /api/v1/users/{ref}/journeys`: each
journey with its variation, status, the live workflow state (next wake time), every decision
with its reason, every provider call with its state (a send being retried shows its attempts
and the provider's last answer), plus a link to the journey in the Temporal UI.

Stopping: `POST /api/v1/journeys/{id}/exit` ends one journey, `POST /api/v1/campaigns/{id}/journeys/exit`
every active journey of a campaign (pause and archive only skip their steps: docs/campaigns.md).
Each running journey is sent the `exit` signal (reason `operator_stopped`), the same an ingested
"don't send if" event sends; a journey whose workflow is no longer running (terminated in the
Temporal UI, failed) has its store row ended instead.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, Field, StrictBool
from sqlmodel import col, select
from temporalio.client import Client, WorkflowExecutionStatus

from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unprocessable
from api.ingestion import EXIT_WAITS_FOR_START
from api.journeys import (
    describe,
    exit_journey,
    journey_id_of_run,
    latest_run,
    start_or_retrigger,
    started_new_run,
    trigger_input,
)
from domain.allocation import keep_or_allocate
from domain.campaign import CampaignSpec, Variation
from store import broadcasts, decisions, journey_rows, sends
from store.broadcast_tables import BroadcastRecipient
from store.campaigns import load_spec
from store.tables import Campaign, Journey, User, now_utc
from store.users import find_user
from workflows.ids import journey_workflow_id
from workflows.journey import JourneyWorkflow
from workflows.models import Enrollment, ExitSignal, JourneyInput, JourneyPlan, JourneyView, TriggerSignal

router = APIRouter(prefix="/api/v1", tags=["journeys"])
log = logging.getLogger(__name__)


class DecisionOut(BaseModel):
    step_index: int
    step_name: str
    outcome: str
    reason: str | None
    channel: str | None
    at: datetime
    detail: dict[str, Any]


class SendOut(BaseModel):
    """One provider call of a step on a channel; `retrying` (the provider answered 429/5xx) and
    `in_flight` (no answer yet, or a timeout) are the states of a send not finished yet."""

    step_index: int
    channel: str
    status: str
    attempts: int
    provider_status: int | None
    provider_response: str | None  # masked (providers/base.py::kept_answer)
    # The vendor's id of the accepted message (SendGrid X-Message-Id, Twilio SID, FCM name, the
    # SMTP Message-ID...): what to look the send up by in the vendor's activity feed.
    provider_message_id: str | None = None
    possible_duplicate: bool
    created_at: datetime
    updated_at: datetime


class JourneyOut(BaseModel):
    id: str
    workflow_id: str
    campaign_id: str
    campaign_version: int
    variation_id: str
    is_control: bool
    is_test: bool
    is_preview: bool = False  # started by a preview: sends while the campaign is a draft or paused
    status: str
    exit_reason: str | None
    triggered_at: datetime
    ended_at: datetime | None
    temporal_ui: str
    live: JourneyView | None = None
    decisions: list[DecisionOut] = []
    sends: list[SendOut] = []


class UserOut(BaseModel):
    id: str
    cuid: str | None
    is_test: bool
    locale: str | None
    cart: list[dict[str, Any]]
    attributes: dict[str, Any]


class TestFlag(BaseModel):
    # JSON true/false only: pydantic's lax bool would read "yes", "off", 0 or "1" as a flag, a guess
    # that decides whether a shopper's journeys skip their waits.
    is_test: StrictBool


class PreviewRequest(BaseModel):
    user: str
    # Run this variation instead of the one allocation gives the user (a tester previews each
    # variation with one test user). Allocation keeps a person's first journey's variation, so
    # a first journey previewed in a forced variation makes it the test user's (docs/testing.md).
    variation_id: str | None = Field(default=None, min_length=1, max_length=64)


class PreviewStarted(BaseModel):
    workflow_id: str
    temporal_ui: str


def _journeys(state: StateDep, section_id: str, user_ref: str | None, journey_id: str | None) -> list[JourneyOut]:
    with state.store.session() as s:
        q = select(Journey).where(Journey.section_id == section_id)
        if journey_id:
            q = q.where(Journey.id == journey_id)
        else:  # a trigger merged into a running journey is part of that one, not a journey of its own
            q = q.where(Journey.status != journey_rows.MERGED)
        if user_ref:
            user = find_user(s, section_id, user_ref)
            if user is None:
                raise NotFound("no such user", field="user")
            q = q.where(Journey.user_id == user.id)
        rows = s.exec(q.order_by(col(Journey.triggered_at).desc()).limit(200)).all()
        calls = sends.of_journeys(s, [j.id for j in rows])
        recipients = broadcasts.recipients_of_journeys(s, list(rows))
        out = [
            JourneyOut(
                **j.model_dump(),
                temporal_ui=state.settings.temporal_ui_link(j.workflow_id),
                decisions=[DecisionOut(**d.model_dump()) for d in decisions.for_journey(s, j.id)],
                sends=[SendOut(**c.model_dump()) for c in calls.get(j.id, [])],
            )
            for j in rows
        ]
        for j in out:
            if j.id in recipients:
                _with_recipient(j, recipients[j.id])
        return out


def _with_recipient(journey: JourneyOut, rec: BroadcastRecipient) -> None:
    """A batched run's recipient: its journey row records only the allocation, the recipient row
    what the run did (sent, skipped or failed and why, or still to come). Shown as the journey's
    decision, and a recipient the run has not finished is not a completed journey."""
    if rec.status == "pending":
        journey.status, journey.ended_at = ("waiting" if rec.not_before is not None else "sending"), None
    outcome = "waiting" if rec.status == "pending" else rec.status
    at = rec.not_before if rec.status == "pending" and rec.not_before else journey.triggered_at
    journey.decisions.append(
        DecisionOut(
            step_index=0, step_name=f"batched run {rec.run_id}", outcome=outcome, reason=rec.reason,
            channel=rec.channel, at=at,
            detail={"run_id": rec.run_id, "not_before": rec.not_before.isoformat() if rec.not_before else None},
        )
    )  # fmt: skip


async def _with_live(state: StateDep, journeys: list[JourneyOut]) -> list[JourneyOut]:
    active = [j for j in journeys if j.status == "active"]
    if active:
        client = await state.client()
        views = await asyncio.gather(*(describe(client, j.workflow_id) for j in active))
        for j, view in zip(active, views, strict=True):
            j.live = view
    return journeys


@router.get("/users/{user_ref}")
def get_user(user_ref: str, principal: Management, state: StateDep) -> UserOut:
    with state.store.session() as s:
        user = find_user(s, principal.section_id, user_ref)
        if user is None:
            raise NotFound("no such user", field="user_ref")
        return UserOut(**user.model_dump())


@router.put("/users/{user_ref}/test")
def flag_test_user(user_ref: str, body: TestFlag, principal: Management, state: StateDep) -> UserOut:
    """Flag a user as a test user: their journeys run with time skipped (previews)."""
    with state.store.session() as s:
        user = find_user(s, principal.section_id, user_ref)
        if user is None:
            raise NotFound("no such user", field="user_ref")
        user.is_test = body.is_test
        s.add(user)
        return UserOut(**user.model_dump())


@router.patch("/users/{user_ref}/attributes")
def update_attributes(
    user_ref: str, body: Annotated[dict[str, Any], Body(max_length=200)], principal: Management, state: StateDep
) -> UserOut:
    """Merge attributes into a user (audience conditions read them); a null value removes one."""
    with state.store.session() as s:
        user = find_user(s, principal.section_id, user_ref)
        if user is None:
            raise NotFound("no such user", field="user_ref")
        merged = {**user.attributes, **body}
        user.attributes = {k: v for k, v in merged.items() if v is not None}
        s.add(user)
        return UserOut(**user.model_dump())


@router.get("/users/{user_ref}/journeys")
async def user_journeys(user_ref: str, principal: Management, state: StateDep) -> list[JourneyOut]:
    journeys = await asyncio.to_thread(_journeys, state, principal.section_id, user_ref, None)
    return await _with_live(state, journeys)


@router.get("/journeys/{journey_id}")
async def get_journey(journey_id: str, principal: Management, state: StateDep) -> JourneyOut:
    journeys = await asyncio.to_thread(_journeys, state, principal.section_id, None, journey_id)
    if not journeys:
        raise NotFound("no such journey", field="journey_id")
    return (await _with_live(state, journeys))[0]


@dataclass(frozen=True)
class _Preview:
    """A preview's start: its workflow id and input; `enrolled`: the journey the API recorded for it
    (None: the preview re-triggers the user's running journey)."""

    workflow_id: str
    input: JourneyInput
    enrolled: str | None = None
    forced: bool = False  # the request chose the variation


def _preview_input(state: StateDep, section_id: str, campaign_id: str, body: PreviewRequest) -> _Preview:
    with state.store.session() as s:
        campaign = s.get(Campaign, campaign_id)
        if campaign is None or campaign.section_id != section_id:
            raise NotFound("no such campaign", field="campaign_id")
        spec = load_spec(s, campaign.id, campaign.version)
        forced = _forced_variation(spec, body.variation_id)
        user: User | None = find_user(s, section_id, body.user)
        if user is None:
            raise NotFound("no such user", field="user")
        if not user.is_test:
            raise Unprocessable("previews run only for test users (PUT /api/v1/users/{ref}/test)", field="user")
        running = s.exec(
            select(Journey).where(
                Journey.section_id == section_id, Journey.campaign_id == campaign.id, Journey.user_id == user.id,
                Journey.status == "active",
            ).order_by(col(Journey.is_test))  # a real-time journey first: it is the one to report
        ).first()  # fmt: skip
        if running is not None and not running.is_test:
            # Started before the user was flagged: it keeps real time, and the preview would only
            # re-trigger it (202, yet nothing would run on a skipped clock).
            raise Conflict(
                f"the user has a journey of this campaign running on real time ({running.id}) from before they "
                "became a test user; wait for it to end, or preview with another test user",
                field="user",
            )
        if running is not None and forced is not None:
            # A preview of the campaign still runs: the start would only re-trigger it, in its own variation.
            raise Conflict(
                f"a journey of this campaign still runs for the user ({running.id}, variation {running.variation_id}); "
                f"stop it first (POST /api/v1/journeys/{running.id}/exit), then preview variation {forced.id}",
                field="user",
            )
        wid = journey_workflow_id(section_id, campaign.id, user.id)
        inp = trigger_input(
            section_id, campaign.id, campaign.version, user.id, spec.trigger.wait, True, state.settings.delivery_timeout
        )
        if running is not None:
            # The preview re-triggers the test user's running journey: it becomes a preview (its
            # steps send while the campaign is a draft or paused, as the preview's own would).
            journey_rows.mark_preview(s, wid)
            return _Preview(wid, inp)
        # The preview's journey goes in as the API's enrollment (as ingestion enrolls at a trigger),
        # its row marked as a preview's: the journey runs the plan it is given and allocates nothing
        # (workflows/journey.py::_plan). The forced variation, else the one allocation keeps or gives.
        variation = forced or keep_or_allocate(
            campaign.id, user.id, spec.variations, journey_rows.first_variation(s, section_id, campaign.id, user.id)
        )
        assert inp.triggered_at is not None
        inp.enrollment = Enrollment(journey_id=str(uuid.uuid4()), plan=JourneyPlan.of(variation))
        journey_rows.enroll(
            s,
            journey_rows.new_journey(
                journey_id=inp.enrollment.journey_id, workflow_id=wid, section_id=section_id,
                campaign_id=campaign.id, campaign_version=campaign.version, priority=spec.priority,
                user_id=user.id, variation=variation, is_test=True, at=inp.triggered_at, is_preview=True,
            ),  # fmt: skip
        )
        return _Preview(wid, inp, inp.enrollment.journey_id, forced=forced is not None)


def _forced_variation(spec: CampaignSpec, variation_id: str | None) -> Variation | None:
    """The variation a preview asks for (None: allocation chooses); 422 if the campaign has none such."""
    if variation_id is None:
        return None
    variation = spec.variation(variation_id)
    if variation is None:
        known = ", ".join(v.id for v in spec.variations)
        raise Unprocessable(
            f"the campaign has no variation {variation_id!r} (its variations: {known})", field="variation_id"
        )
    return variation


def _withdraw(state: StateDep, journey_id: str) -> None:
    with state.store.session() as s:
        journey_rows.withdraw(s, [journey_id])


def _retriggered(state: StateDep, journey_id: str, workflow_id: str) -> None:
    """A journey of the user started between the preview's check and its start, and took its trigger:
    the preview's row is withdrawn and the running journey becomes the preview."""
    with state.store.session() as s:
        journey_rows.withdraw(s, [journey_id])
        journey_rows.mark_preview(s, workflow_id)


@router.post("/campaigns/{campaign_id}/preview", status_code=202)
async def preview(campaign_id: str, body: PreviewRequest, principal: Management, state: StateDep) -> PreviewStarted:
    """Run the campaign for a test user with time skipped: a 90-day journey lands in seconds.

    `variation_id` runs that variation whatever allocation gives the user. The journey is marked as
    a preview's: its steps send while the campaign is a draft or paused (docs/testing.md)."""
    start = await asyncio.to_thread(_preview_input, state, principal.section_id, campaign_id, body)
    wid = start.workflow_id
    trigger = TriggerSignal(event_id="preview_" + secrets.token_hex(8))
    variation_id = start.input.enrollment.plan.variation_id if start.input.enrollment else None
    try:
        client = await state.client()
        handle = await start_or_retrigger(
            client, state.settings.task_queue, wid, start.input, trigger, variation_id=variation_id
        )
    except Exception:
        if start.enrolled is not None:  # no run will end the row the preview recorded
            await asyncio.to_thread(_withdraw, state, start.enrolled)
        raise
    if start.enrolled is not None and not started_new_run(handle):
        # Another journey started between the check and this start: it took the trigger.
        if start.forced:  # it runs its own variation, not the one asked for
            await asyncio.to_thread(_withdraw, state, start.enrolled)
            raise Conflict(
                "another journey of this campaign started for the user meanwhile; stop it first", field="user"
            )
        await asyncio.to_thread(_retriggered, state, start.enrolled, wid)
    return PreviewStarted(workflow_id=wid, temporal_ui=state.settings.temporal_ui_link(wid))


# ------------------------------------------------------------ stopping journeys

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
    return StopFailure(journey_id=row.id, reason=f"{type(err).__name__}: {err}"[:300])


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
