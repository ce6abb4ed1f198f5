"""Journeys for operators: a user's journeys, their live state and decision trace; previews.

"Why did this user get nothing?" is answered by `GET /api/v1/users/{ref}/journeys`: each
journey with its variation, status, the live workflow state (next wake time), every decision
with its reason, every provider call with its state (a send being retried shows its attempts
and the provider's last answer), plus a link to the journey in the Temporal UI.

Stopping journeys is api/routes/journey_stops.py.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field, StrictBool
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unavailable, Unprocessable
from api.journeys import Live, describe, start_or_retrigger, started_new_run, trigger_input
from api.temporal_errors import calling_temporal
from domain.allocation import keep_or_allocate
from domain.campaign import CampaignSpec, Variation
from store import broadcasts, decisions, journey_rows, sends
from store.broadcast_tables import BroadcastRecipient
from store.campaigns import load_spec
from store.tables import Campaign, Journey, User
from store.users import AmbiguousUserRef, find_user
from workflows.ids import journey_workflow_id
from workflows.models import Enrollment, JourneyInput, JourneyPlan, JourneyView, TriggerSignal

router = APIRouter(prefix="/api/v1", tags=["journeys"])


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
    # Why `live` is missing for an active journey: Temporal unreachable or answering an error, the
    # workflow gone from it, no worker to answer the query. The rest of the journey is the store's.
    live_error: str | None = None
    # A send in its retry backoff (the provider answered 429 with Retry-After, 5xx, or timed out):
    # when its next attempt runs (api/journeys.py::Live.next_attempt_at).
    next_attempt_at: datetime | None = None
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


def _user(s: Session, section_id: str, ref: str, field: str) -> User:
    """The user `ref` names (`store.users.find_user`); 404 when none, 409 when it names two people
    (a device id of one, the CUID of another): the operator repeats it with the Rejoin id.
    `field`: where the ref was sent (`user_ref` in the path, `user` in a body)."""
    try:
        user = find_user(s, section_id, ref)
    except AmbiguousUserRef as exc:
        raise Conflict(str(exc), field=field) from None
    if user is None:
        raise NotFound("no such user", field=field)
    return user


def _user_journeys(state: StateDep, section_id: str, user_ref: str) -> list[JourneyOut]:
    with state.store.session() as s:
        user = _user(s, section_id, user_ref, "user_ref")
        # a trigger merged into a running journey is part of that one, not a journey of its own
        q = select(Journey).where(Journey.section_id == section_id, Journey.user_id == user.id,
                                  Journey.status != journey_rows.MERGED)  # fmt: skip
        return _journey_views(state, s, q)


def _journey(state: StateDep, section_id: str, journey_id: str) -> list[JourneyOut]:
    with state.store.session() as s:
        q = select(Journey).where(Journey.section_id == section_id, Journey.id == journey_id)
        return _journey_views(state, s, q)


def _journey_views(state: StateDep, s: Session, q: SelectOfScalar[Journey]) -> list[JourneyOut]:
    """The journeys `q` selects (newest first, at most 200) with decisions, sends and run recipients."""
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
    """The active journeys' live state from Temporal. Reading journeys never fails because Temporal
    is down or erring (as reading a campaign does not: its `schedule_error`): `live_error` says why."""
    active = [j for j in journeys if j.status == "active"]
    if not active:
        return journeys
    try:
        client = await state.client()
    except Unavailable as err:
        lives = [Live(unavailable=err.message)] * len(active)
    else:
        lives = await asyncio.gather(*(describe(client, j.workflow_id) for j in active))
    for j, live in zip(active, lives, strict=True):
        j.live, j.live_error, j.next_attempt_at = live.view, live.unavailable, live.next_attempt_at
    return journeys


@router.get("/users/{user_ref}")
def get_user(user_ref: str, principal: Management, state: StateDep) -> UserOut:
    with state.store.session() as s:
        user = _user(s, principal.section_id, user_ref, "user_ref")
        return UserOut(**user.model_dump())


@router.put("/users/{user_ref}/test")
def flag_test_user(user_ref: str, body: TestFlag, principal: Management, state: StateDep) -> UserOut:
    """Flag a user as a test user: their journeys run with time skipped (previews)."""
    with state.store.session() as s:
        user = _user(s, principal.section_id, user_ref, "user_ref")
        user.is_test = body.is_test
        s.add(user)
        return UserOut(**user.model_dump())


@router.patch("/users/{user_ref}/attributes")
def update_attributes(
    user_ref: str, body: Annotated[dict[str, Any], Body(max_length=200)], principal: Management, state: StateDep
) -> UserOut:
    """Merge attributes into a user (audience conditions read them); a null value removes one."""
    with state.store.session() as s:
        user = _user(s, principal.section_id, user_ref, "user_ref")
        merged = {**user.attributes, **body}
        user.attributes = {k: v for k, v in merged.items() if v is not None}
        s.add(user)
        return UserOut(**user.model_dump())


@router.get("/users/{user_ref}/journeys")
async def user_journeys(user_ref: str, principal: Management, state: StateDep) -> list[JourneyOut]:
    journeys = await asyncio.to_thread(_user_journeys, state, principal.section_id, user_ref)
    return await _with_live(state, journeys)


@router.get("/journeys/{journey_id}")
async def get_journey(journey_id: str, principal: Management, state: StateDep) -> JourneyOut:
    journeys = await asyncio.to_thread(_journey, state, principal.section_id, journey_id)
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
        user = _user(s, section_id, body.user, "user")
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
        async with calling_temporal("start the preview's journey"):
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
