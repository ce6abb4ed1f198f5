"""Journey look-up for operators: a user's journeys, their live state and decision trace.

"Why did this user get nothing?" is answered by `GET /api/v1/users/{ref}/journeys`: each
journey with its variation, status, the live workflow state (next wake time), every decision
with its reason, every provider call with its state (a send being retried shows its attempts
and the provider's last answer), plus a link to the journey in the Temporal UI.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, StrictBool
from sqlmodel import col, select

from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unprocessable
from api.journeys import describe, start_or_retrigger, trigger_input
from store import decisions, journey_rows, sends
from store.campaigns import load_spec
from store.tables import Campaign, Journey, User
from store.users import find_user
from workflows.ids import journey_workflow_id
from workflows.models import JourneyView, TriggerSignal

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
        return [
            JourneyOut(
                **j.model_dump(),
                temporal_ui=state.settings.temporal_ui_link(j.workflow_id),
                decisions=[DecisionOut(**d.model_dump()) for d in decisions.for_journey(s, j.id)],
                sends=[SendOut(**c.model_dump()) for c in calls.get(j.id, [])],
            )
            for j in rows
        ]


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


def _preview_input(state: StateDep, section_id: str, campaign_id: str, user_ref: str) -> tuple[str, Any]:
    with state.store.session() as s:
        campaign = s.get(Campaign, campaign_id)
        if campaign is None or campaign.section_id != section_id:
            raise NotFound("no such campaign", field="campaign_id")
        user: User | None = find_user(s, section_id, user_ref)
        if user is None:
            raise NotFound("no such user", field="user")
        if not user.is_test:
            raise Unprocessable("previews run only for test users (PUT /api/v1/users/{ref}/test)", field="user")
        real_time = s.exec(
            select(Journey.id).where(
                Journey.section_id == section_id, Journey.campaign_id == campaign.id, Journey.user_id == user.id,
                Journey.status == "active", Journey.is_test == False,  # noqa: E712  (SQL expression)
            )
        ).first()  # fmt: skip
        if real_time is not None:
            # Started before the user was flagged: it keeps real time, and the preview would only
            # re-trigger it (202, yet nothing would run on a skipped clock).
            raise Conflict(
                f"the user has a journey of this campaign running on real time ({real_time}) from before they "
                "became a test user; wait for it to end, or preview with another test user",
                field="user",
            )
        spec = load_spec(s, campaign.id, campaign.version)
        inp = trigger_input(
            section_id, campaign.id, campaign.version, user.id, spec.trigger.wait, True, state.settings.delivery_timeout
        )
        return journey_workflow_id(section_id, campaign.id, user.id), inp


@router.post("/campaigns/{campaign_id}/preview", status_code=202)
async def preview(campaign_id: str, body: PreviewRequest, principal: Management, state: StateDep) -> PreviewStarted:
    """Run the campaign for a test user with time skipped: a 90-day journey lands in seconds."""
    wid, inp = await asyncio.to_thread(_preview_input, state, principal.section_id, campaign_id, body.user)
    client = await state.client()
    await start_or_retrigger(
        client, state.settings.task_queue, wid, inp, TriggerSignal(event_id="preview_" + secrets.token_hex(8))
    )
    return PreviewStarted(workflow_id=wid, temporal_ui=state.settings.temporal_ui_link(wid))


