"""Wire contracts between the API, the journey workflow and its activities.

Every model carries ids, SKUs and times only: no email, phone or provider secret ever enters a
workflow payload or its history. New fields always get defaults so recorded histories decode.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from domain.campaign import Variation

MAX_SEEN_EVENTS = 500  # signal ids remembered for de-duplication (signals are at-least-once)
MAX_TRIGGER_EVENTS = 50
MAX_SKUS = 50


class TriggerSignal(BaseModel):
    """A (re-)trigger of the journey by one event."""

    event_id: str
    skus: list[str] = Field(default_factory=list)


class ExitSignal(BaseModel):
    """A "don't send if" event: cancels every step not yet sent."""

    event_id: str
    reason: str
    skus: list[str] = Field(default_factory=list)  # purchased items, for purchase_of_trigger_item


class StepPlan(BaseModel):
    index: int
    name: str
    wait: timedelta | None = None  # None for the first step (it waits the trigger's wait)
    channels: list[str] = Field(default_factory=list)


class JourneyPlan(BaseModel):
    """The variation a user was allocated to, as the journey will run it."""

    variation_id: str
    variation_name: str
    control: bool = False
    steps: list[StepPlan] = Field(default_factory=list)

    @classmethod
    def of(cls, variation: Variation) -> JourneyPlan:
        """The plan of a journey allocated to `variation` (enroll and the API build it alike)."""
        steps = [
            StepPlan(index=i, name=st.name, wait=st.wait, channels=[c.value for c in st.messages])
            for i, st in enumerate(variation.steps)
        ]
        return cls(variation_id=variation.id, variation_name=variation.name, control=variation.control, steps=steps)


class Enrollment(BaseModel):
    """A journey enrolled when its trigger was accepted: the API recorded the journey row (and the
    user's cohort) in the ingestion transaction, so the workflow starts with its id and plan and
    runs no enroll step of its own (patch `enroll-at-trigger`)."""

    journey_id: str
    plan: JourneyPlan


class DecisionRecord(BaseModel):
    step_index: int
    outcome: Literal["sent", "skipped", "failed", "exited"]
    reason: str | None = None
    channel: str | None = None
    at: datetime
    possible_duplicate: bool = False


JourneyStatus = Literal["triggered", "waiting", "sending", "completed", "exited", "holdout"]


class JourneyState(BaseModel):
    """Everything the journey must remember, carried across continue-as-new."""

    journey_id: str | None = None
    plan: JourneyPlan | None = None
    status: JourneyStatus = "triggered"
    step_index: int = 0
    wake_at: datetime | None = None
    first_trigger_at: datetime | None = None
    last_trigger_at: datetime | None = None
    trigger_count: int = 0
    skus: list[str] = Field(default_factory=list)
    trigger_event_ids: list[str] = Field(default_factory=list)
    seen_event_ids: list[str] = Field(default_factory=list)
    exit_reason: str | None = None
    decisions: list[DecisionRecord] = Field(default_factory=list)
    runs: int = 1
    # The last step's send ended the journey row in its own transaction (`StepRequest.last_step`),
    # so finishing as "completed" needs no store step of its own.
    row_ended: bool = False
    # How far a test user's journey has moved its own clock past workflow time (patch
    # `test-user-own-clock`: its waits pass at once); zero for every other journey.
    clock_offset: timedelta = timedelta()


class JourneyInput(BaseModel):
    section_id: str
    campaign_id: str
    campaign_version: int
    user_id: str
    trigger_wait: timedelta
    is_test: bool = False
    delivery_timeout: timedelta = timedelta(seconds=30)
    delivery_budget: timedelta = timedelta(hours=6)  # a cart reminder hours late is worse than none
    state: JourneyState | None = None
    # When Rejoin received the event that started the journey: the first wait runs from then
    # (patch `step-in-one-activity`), and the API shows that deadline from the start.
    triggered_at: datetime | None = None
    # Set by the API for a trigger that finds no active journey of the person in the campaign;
    # None for re-triggers, previews and journeys started before patch `enroll-at-trigger`.
    enrollment: Enrollment | None = None
    # Exits of the same request as the trigger that starts the journey, after it (an add-to-cart
    # and a purchase in one batch): applied with the start, before any wait, so they cannot lose
    # a race with a test user's waits, which pass at once (patch `exits-in-start-input`). Each is
    # also signalled as usual; the journey ignores an event id it has seen.
    exits: list[ExitSignal] = Field(default_factory=list)


class JourneyResult(BaseModel):
    journey_id: str
    status: JourneyStatus
    exit_reason: str | None = None
    sent: int = 0
    decisions: list[DecisionRecord] = Field(default_factory=list)
    runs: int = 1  # runs in the continue-as-new chain


class JourneyView(BaseModel):
    """What the `current_state` query returns: the journey as an operator wants to see it."""

    journey_id: str | None
    status: JourneyStatus
    variation_id: str | None
    step_index: int
    total_steps: int
    next_wake_at: datetime | None
    exit_reason: str | None
    trigger_count: int
    decisions: list[DecisionRecord]


# ---------------------------------------------------------------- activity I/O


class EnrollRequest(BaseModel):
    journey_id: str
    workflow_id: str
    section_id: str
    campaign_id: str
    campaign_version: int
    user_id: str
    is_test: bool = False
    as_of: datetime


class DecideRequest(BaseModel):
    journey_id: str
    section_id: str
    campaign_id: str
    campaign_version: int
    user_id: str
    step_index: int
    as_of: datetime
    exclude_channels: list[str] = Field(default_factory=list)


class StepDecision(BaseModel):
    action: Literal["send", "skip", "defer"]
    reason: str | None = None
    channel: str | None = None
    integration_id: str | None = None
    send_key: str | None = None
    not_before: datetime | None = None  # "defer": outside the recipient's send window until then


class DeliverRequest(BaseModel):
    journey_id: str
    section_id: str
    campaign_id: str
    campaign_version: int
    user_id: str
    step_index: int
    channel: str
    integration_id: str
    send_key: str
    as_of: datetime
    skus: list[str] = Field(default_factory=list)
    trigger_event_ids: list[str] = Field(default_factory=list)
    # The journey's last step: an accepted send also ends the journey row ("completed") in the
    # transaction that records the acceptance.
    end_journey: bool = False


class DeliverResult(BaseModel):
    status: Literal["accepted", "failed"]
    reason: str | None = None
    provider_status: int | None = None
    possible_duplicate: bool = False
    fallback_allowed: bool = False  # a permanent failure on this channel: try the next one


class GiveUpRequest(BaseModel):
    """Delivery retries ran out: record the failure and give the cap slot back."""

    journey_id: str
    send_key: str
    step_index: int
    channel: str
    as_of: datetime
    reason: str


class FinishRequest(BaseModel):
    journey_id: str
    status: JourneyStatus
    exit_reason: str | None = None
    as_of: datetime
    step_index: int = 0


class StepRequest(DecideRequest):
    """One step as one activity (patch `step-in-one-activity`): the decision's inputs, and what
    delivery needs besides the decision it makes."""

    skus: list[str] = Field(default_factory=list)
    trigger_event_ids: list[str] = Field(default_factory=list)
    last_step: bool = False

    def deliver_request(self, decision: StepDecision) -> DeliverRequest:
        assert decision.channel and decision.integration_id and decision.send_key, decision
        return DeliverRequest(
            **self.model_dump(include=_DELIVERY_IDS),
            channel=decision.channel,
            integration_id=decision.integration_id,
            send_key=decision.send_key,
            end_journey=self.last_step,
        )


_DELIVERY_IDS = {"journey_id", "section_id", "campaign_id", "campaign_version", "user_id", "step_index", "as_of",
                 "skus", "trigger_event_ids"}  # fmt: skip


class StepOutcome(BaseModel):
    """What a step came to: the decision and, when it sent, the delivery's result."""

    decision: StepDecision
    delivery: DeliverResult | None = None
    journey_ended: bool = False  # the journey row was ended with the accepted send


class GiveUpStepRequest(BaseModel):
    """The step activity ran out of budget: the workflow knows the decision key, not the send key."""

    journey_id: str
    decision_key: str
    step_index: int
    as_of: datetime
    reason: str
