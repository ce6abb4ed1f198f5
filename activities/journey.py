"""Journey activities that touch only the store: enroll, decide (channel, caps, priority), finish.

Plain `def` activities: they run on the worker's thread pool, so blocking database calls never
stall the event loop. Each is idempotent under retry: results are keyed by the journey id and
step, and a retried call returns what the first one decided.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session
from temporalio import activity

from activities.provider_retry import log_failed
from activities.step_reads import StepReads
from domain import schedule as sched
from domain.allocation import keep_or_allocate
from domain.campaign import CampaignSpec, Channel
from domain.caps import CapPolicy
from domain.channels import choose_channel
from domain.conditions import matches
from store import decisions, journey_rows, report_rollup, reservations, sends
from store.campaigns import UnknownCampaign, load_spec
from store.engine import Store
from store.reachability import reach
from store.tables import Journey, Send, User, now_utc
from store.users import canonical_id, canonical_user
from workflows.ids import decision_key, send_key
from workflows.models import (
    DecideRequest,
    DeliverResult,
    EnrollRequest,
    FinishRequest,
    GiveUpRequest,
    GiveUpStepRequest,
    JourneyPlan,
    StepDecision,
    StepOutcome,
)

log = logging.getLogger(__name__)
# Campaign statuses whose steps still send in a preview's journey: a tester previews a draft
# before activating it, or a paused campaign before resuming it. An archived one never sends.
PREVIEW_SENDS_WHILE = frozenset({"draft", "paused"})


class JourneyActivities:
    def __init__(self, store: Store, cap_policy: CapPolicy, priority_window: timedelta) -> None:
        self.store = store
        self.cap_policy = cap_policy
        self.priority_window = priority_window

    @activity.defn(name="journey.enroll")
    def enroll(self, req: EnrollRequest) -> JourneyPlan:
        """Allocate the user's variation (their first journey's, while the spec has it) and record the journey."""
        with self.store.session() as s:
            spec = load_spec(s, req.campaign_id, req.campaign_version)
            user_id = canonical_id(s, req.user_id)
            first = journey_rows.first_variation(s, req.section_id, req.campaign_id, user_id)
            variation = keep_or_allocate(req.campaign_id, req.user_id, spec.variations, first)
            journey = journey_rows.new_journey(
                journey_id=req.journey_id,
                workflow_id=req.workflow_id,
                section_id=req.section_id,
                campaign_id=req.campaign_id,
                campaign_version=req.campaign_version,
                priority=spec.priority,
                user_id=user_id,
                variation=variation,
                is_test=req.is_test,
                at=req.as_of,
            )
            # insert-if-absent: a retry records nothing twice (and ended the others already)
            if journey_rows.enroll(s, journey):
                _end_superseded(s, req.workflow_id, req.journey_id, req.as_of)
        return JourneyPlan.of(variation)

    @activity.defn(name="journey.decide")
    def decide(self, req: DecideRequest) -> StepDecision:
        """Pick the channel and reserve a capped slot, or say why the step cannot send."""
        with self.store.session() as s:
            return self.decide_in(s, req)

    def decide_in(self, s: Session, req: DecideRequest, reads: StepReads | None = None) -> StepDecision:
        """`decide` in the caller's transaction (the step activity delivers in the same one);
        `reads` gets the rows a new decision read, for the delivery that follows."""
        key = decision_key(req.journey_id, req.step_index, req.exclude_channels)
        previous = decisions.detail_of(s, key)
        if previous is not None:
            log.info("decision %s already made, returning it", key)
            return StepDecision.model_validate(previous["decision"])
        spec = load_spec(s, req.campaign_id, req.campaign_version)
        variation_id, exited = journey_rows.variation_and_exit(s, req.journey_id)
        # The journey may have started under an id since merged into another (identity).
        user = canonical_user(s, req.user_id)
        if variation_id is None or user is None:
            raise LookupError(f"journey {req.journey_id} or its user is missing")
        variation = spec.variation(variation_id)
        assert variation is not None, "a journey's variation exists in its campaign version"
        step = variation.steps[req.step_index]
        if exited is not None:
            # Its row says it exited (a merge recorded the exit it owed: the person bought on another
            # device) while the exit's signal has not reached the workflow: nothing more is sent.
            decision = StepDecision(action="skip", reason=exited)
        else:
            not_before = _window_defer(spec, user, req.as_of)
            if not_before is not None:
                # Not recorded: the decision is made again when the window opens.
                return StepDecision(action="defer", reason="send window", not_before=not_before)
            if reads is not None:
                reads.user, reads.variation_id = user, variation_id
            decision = self._decide(s, req, spec, user, [c.value for c in step.messages], key, reads)
        decisions.record(
            s,
            key=key,
            journey_id=req.journey_id,
            section_id=req.section_id,
            user_id=req.user_id,
            step_index=req.step_index,
            step_name=step.name,
            outcome="decided" if decision.action == "send" else "skipped",
            reason=decision.reason,
            channel=decision.channel,
            at=req.as_of,
            detail={"decision": decision.model_dump(mode="json"), "excluded": req.exclude_channels},
        )
        return decision

    def _decide(
        self,
        s: Session,
        req: DecideRequest,
        spec: CampaignSpec,
        user: User,
        step_channels: list[str],
        key: str,
        reads: StepReads | None,
    ) -> StepDecision:
        status = journey_rows.campaign_status(s, req.campaign_id)
        if status is not None and status != "active" and not _previews_send(s, status, req.journey_id):
            # Paused or archived mid-journey: later steps stop; resuming lets the next ones send.
            return StepDecision(action="skip", reason=f"campaign_{status}")
        if not matches(spec.audience.conditions, user.attributes, spec.audience.match):
            return StepDecision(action="skip", reason="audience")
        if spec.send_window is not None and spec.send_window.outside == "drop" and _outside_window(spec, user, req.as_of):
            return StepDecision(action="skip", reason="quiet_hours")
        r = reach(s, req.section_id, user.id, step_channels)
        if reads is not None:
            reads.reach = r
        choice = choose_channel(
            [c.value for c in spec.channel_priority], step_channels, r.unreachable, req.exclude_channels
        )
        if choice.channel is None:
            return StepDecision(action="skip", reason=choice.reason)
        channel = str(choice.channel)
        cap = spec.settings.frequency_caps.get(Channel(channel))
        policy = self.cap_policy
        section_cap = journey_rows.section_cap(s, req.section_id)
        if section_cap:
            policy = CapPolicy(section_cap, policy.window)
        skey = send_key(req.journey_id, req.step_index, channel)
        verdict = reservations.reserve(
            s,
            reservations.SlotRequest(
                key=skey,
                section_id=req.section_id,
                user_id=user.id,
                channel=channel,
                campaign_id=req.campaign_id,
                priority=spec.priority,
                as_of=req.as_of,
                campaign_limit=cap.max_messages if cap else None,
                campaign_period=cap.period if cap else timedelta(days=1),
            ),
            policy,
            self.priority_window,
        )
        if not verdict.granted:
            return StepDecision(action="skip", reason=verdict.explained, channel=channel)
        return StepDecision(
            action="send", channel=channel, integration_id=r.integrations[channel].id, send_key=skey
        )

    @activity.defn(name="journey.give_up")
    def give_up(self, req: GiveUpRequest) -> DeliverResult:
        """Delivery could not complete within its budget: record it (`_give_up`: the cap slot is
        released unless an attempt may have been delivered)."""
        with self.store.session() as s:
            return self._give_up(s, req)

    @activity.defn(name="journey.give_up_step")
    def give_up_step(self, req: GiveUpStepRequest) -> StepOutcome:
        """`journey.send_step` ran out of budget: give up the send its decision chose, if it chose one.

        The workflow holds only the decision key; the decision recorded under it names the send.
        """
        with self.store.session() as s:
            previous = decisions.detail_of(s, req.decision_key)
            decision = StepDecision.model_validate(previous["decision"]) if previous is not None else None
            if decision is None or decision.action != "send" or not decision.channel or not decision.send_key:
                # The step never got as far as a send (its transaction failed for the whole budget):
                # still in the decision trace, so "why nothing?" has an answer.
                _trace_gave_up(s, req.journey_id, f"{req.decision_key}:gave_up", req.step_index, "skipped",
                               req.reason, req.as_of)  # fmt: skip
                return StepOutcome(decision=StepDecision(action="skip", reason=req.reason))
            given_up = GiveUpRequest(
                journey_id=req.journey_id,
                send_key=decision.send_key,
                step_index=req.step_index,
                channel=decision.channel,
                as_of=req.as_of,
                reason=req.reason,
            )
            return StepOutcome(decision=decision, delivery=self._give_up(s, given_up))

    def _give_up(self, s: Session, req: GiveUpRequest) -> DeliverResult:
        """Record a send that will not be attempted again (budget spent, the user exited, an error
        not retried) as failed. If an attempt may have reached the provider (its outcome unknown:
        `sends.maybe_delivered`) it is flagged `possible_duplicate`, keeps its cap slot and allows
        no other channel, as a refusal after such an attempt does (`Delivery._fail_in`); a send
        whose every attempt was answered with a failure frees its slot and may fall back."""
        send = s.get(Send, req.send_key)
        if send is not None and send.status == "accepted":
            # The provider accepted it and only the activity's answer was lost: a send, not a failure.
            return DeliverResult(status="accepted", provider_status=send.provider_status,
                                 possible_duplicate=send.possible_duplicate)  # fmt: skip
        if send is not None and send.status in ("failed", "skipped"):
            # Recorded already by the last attempt (only its answer was lost): that record stands.
            return DeliverResult(status="failed", reason=send.provider_response, provider_status=send.provider_status,
                                 possible_duplicate=send.possible_duplicate,
                                 fallback_allowed=send.status == "failed" and not send.possible_duplicate)  # fmt: skip
        maybe_delivered = sends.maybe_delivered(send)
        reason = f"{req.reason} ({sends.MAYBE_DELIVERED})" if maybe_delivered else req.reason
        if not maybe_delivered:
            reservations.release(s, req.send_key)
        previous: str | None = None
        if send is not None:
            previous, send.status = send.status, "failed"
            send.message_enc = None  # final: the content kept for its retries goes (frozen_message.py)
            send.possible_duplicate = send.possible_duplicate or maybe_delivered
            send.provider_response = reason[:2000]
            send.updated_at = now_utc()
            s.add(send)
        detail = {"possible_duplicate": True} if maybe_delivered else None
        _trace_gave_up(s, req.journey_id, f"{req.send_key}:outcome", req.step_index, "failed", reason,
                       req.as_of, req.channel, detail)  # fmt: skip
        log_failed(s, req.send_key, reason, status=send.provider_status if send is not None else None)
        if send is not None:  # last, as every send's counters (`Delivery._accept`)
            report_rollup.count_send(s, send, previous)
        return DeliverResult(status="failed", reason=reason, possible_duplicate=maybe_delivered,
                             fallback_allowed=not maybe_delivered)  # fmt: skip

    @activity.defn(name="journey.finish")
    def finish(self, req: FinishRequest) -> None:
        # Only an exit has a reason: an exit signal that came after the last step (a purchase while
        # it was finished) leaves the workflow's state holding one, but the journey completed.
        reason = req.exit_reason if req.status == "exited" else None
        with self.store.session() as s:
            ended = journey_rows.end(s, req.journey_id, req.status, reason, req.as_of)
            if ended is None:
                return
            if req.status == "exited":
                name = _step_name(s, ended.campaign_id, ended.campaign_version, ended.variation_id, req.step_index)
                decisions.record(
                    s,
                    key=f"{req.journey_id}:{req.step_index}:exit",
                    journey_id=req.journey_id,
                    section_id=ended.section_id,
                    user_id=ended.user_id,
                    step_index=req.step_index,
                    step_name=name,
                    outcome="exited",
                    reason=req.exit_reason,
                    at=req.as_of,
                    detail={"cancelled_from_step": req.step_index},
                )


def _trace_gave_up(
    s: Session,
    journey_id: str,
    key: str,
    step_index: int,
    outcome: str,
    reason: str,
    at: datetime,
    channel: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record a step that ran out of budget in its journey's decision trace (if the journey exists)."""
    journey = s.get(Journey, journey_id)
    if journey is not None:
        decisions.record(
            s,
            key=key,
            journey_id=journey_id,
            section_id=journey.section_id,
            user_id=journey.user_id,
            step_index=step_index,
            step_name=_step_name(s, journey.campaign_id, journey.campaign_version, journey.variation_id, step_index),
            outcome=outcome,
            reason=reason,
            channel=channel,
            at=at,
            detail=detail,
        )


def _end_superseded(s: Session, workflow_id: str, journey_id: str, at: datetime) -> None:
    """A run that enrolls itself ends the other active journeys of its workflow id, in the same
    transaction as its row (`journey_rows.end_superseded`): at most one is active per workflow id."""
    ended = journey_rows.end_superseded(s, workflow_id, journey_id, at)
    if ended:
        log.warning("journeys %s ended (%s): workflow %s runs journey %s now, their runs were closed outside Rejoin",
                    ", ".join(ended), journey_rows.SUPERSEDED_REASON, workflow_id, journey_id)  # fmt: skip


def _step_name(s: Session, campaign_id: str, version: int, variation_id: str, step_index: int) -> str:
    """The step's name in the journey's campaign version (as decisions record it), else "step N"
    (a version or variation no longer there, an index past the last step)."""
    try:
        variation = load_spec(s, campaign_id, version).variation(variation_id)
    except UnknownCampaign:
        variation = None
    if variation is not None and 0 <= step_index < len(variation.steps):
        return variation.steps[step_index].name
    return f"step {step_index}"


def _window(spec: CampaignSpec, user: User) -> tuple[time, time, ZoneInfo] | None:
    """The campaign's send window in the user's timezone (their `timezone` attribute, else the default)."""
    w = spec.send_window
    return None if w is None else sched.recipient_window(w, user.attributes, user.locale)


def _previews_send(s: Session, status: str, journey_id: str) -> bool:
    """Whether a step of a campaign that is not active sends all the same: the journey is a test
    user's preview (api/routes/journeys.py::preview) and the campaign a draft or paused. The
    journey row is read only then: an active campaign's steps never ask."""
    return status in PREVIEW_SENDS_WHILE and journey_rows.started_by_preview(s, journey_id)


def _outside_window(spec: CampaignSpec, user: User, as_of: datetime) -> bool:
    window = _window(spec, user)
    return window is not None and not sched.in_window(as_of, *window)


def _window_defer(spec: CampaignSpec, user: User, as_of: datetime) -> datetime | None:
    """When a step due now outside the window (policy "wait") may be sent; None to go ahead."""
    window = _window(spec, user)
    if window is None or spec.send_window is None or spec.send_window.outside != "wait":
        return None
    if sched.in_window(as_of, *window):
        return None
    return sched.window_opens(as_of, *window)
