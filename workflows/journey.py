"""JourneyWorkflow: one triggered journey of one user through one campaign.

Reads like the campaign canvas: enroll (allocate a variation), then for each step wait, decide
(channel, caps, priority), deliver, record. Re-triggers during the first wait restart it from
the latest trigger ("delivery relevancy"); later ones only add context. An exit signal cancels
every step not yet sent, and the retries of a send the provider has not accepted yet. All I/O is
in activities; every time passed to them is workflow time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, CancelledError, RetryState

with workflow.unsafe.imports_passed_through():
    from activities.delivery import Delivery
    from activities.journey import JourneyActivities
    from activities.journey_step import JourneySteps
    from workflows import search
    from workflows.ids import decision_key
    from workflows.models import (
        MAX_SEEN_EVENTS,
        MAX_SKUS,
        MAX_TRIGGER_EVENTS,
        DecideRequest,
        DecisionRecord,
        DeliverRequest,
        DeliverResult,
        EnrollRequest,
        ExitSignal,
        FinishRequest,
        GiveUpRequest,
        GiveUpStepRequest,
        JourneyInput,
        JourneyPlan,
        JourneyResult,
        JourneyState,
        JourneyStatus,
        JourneyView,
        StepDecision,
        StepOutcome,
        StepRequest,
        TriggerSignal,
    )

STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
# Store-only steps (enroll, decide, give_up, finish) run as local activities in the worker that
# runs the workflow task: no task-queue round trip and one marker event instead of ~6 history
# events each, which is what bounded journey throughput (docs/performance.md). This changes the
# command sequence, so journeys started before it keep the durable activities (the replay suite
# in tests/reliability/test_replay.py holds both paths). Provider calls are never local: a local
# activity's result is recorded only when its workflow task completes, so a worker crash in
# between runs it again: harmless for these idempotent store writes, a duplicate for a send.
LOCAL_STORE_PATCH = "store-steps-local-activities"
# Each step is one durable activity (`journey.send_step`: decide, then deliver) instead of a local
# decide and a durable deliver; the last step's send ends the journey row in its own transaction
# (no finish step after it); search attributes are upserted only when they change (the API
# starts the journey as it is at once: waiting for step 0, in its variation, until the deadline
# from the event's receive time). Two local activities and their markers fewer per journey:
# docs/performance.md. Journeys started before it keep the path they started on until they
# continue-as-new.
STEP_ACTIVITY_PATCH = "step-in-one-activity"
# The API enrolls a journey when it accepts the trigger (the journey row and the user's cohort in
# the ingestion transaction; `JourneyInput.enrollment`), so a new journey's first workflow task
# runs no enroll local activity: one marker, a local-activity round and a store transaction fewer
# per journey (docs/performance.md). Asked only when the input carries an enrollment: journeys
# started before it (and previews, and re-triggers that started a journey after an operator
# ended one) enroll themselves as before. It implies STEP_ACTIVITY_PATCH (it came after), so a
# new journey records this one marker, not both; a journey whose history has the older marker
# only (an older worker took its first task and enrolled it itself) stays on that path.
ENROLL_AT_TRIGGER_PATCH = "enroll-at-trigger"
# A test user's journey keeps its own clock: a wait (trigger wait, step wait, send window) passes
# at once by moving the journey's clock forward (`JourneyState.clock_offset`), where before it
# was a real timer that the server's per-workflow time skipping fired at once. Every time the
# journey hands out (`as_of` of its activities, recorded decisions, deadlines) is the same as
# under time skipping, but a test user's step costs no timer, no time-skipping transition and no
# workflow task of its own (docs/performance.md). Asked only for test users' journeys (implied by
# ENROLL_AT_TRIGGER_PATCH, which came in the same release); real users' journeys never move their
# clock. Test users' journeys started before it keep their timers until they continue-as-new.
TEST_USER_CLOCK_PATCH = "test-user-own-clock"
# A re-trigger that only postpones the first step writes nothing: it keeps the running timer
# (the journey wakes at the earlier deadline, finds it moved and sleeps the rest) and leaves
# `RejoinNextSendAt` at that timer's deadline, a lower bound of the send, rewritten when the
# journey wakes. Before, every re-trigger cancelled and restarted the timer and upserted the new
# deadline (three history events and a visibility write); returning shoppers' cart updates are
# most of a shop's events, and the upsert was ~half of a re-trigger's server CPU
# (docs/performance.md). The journeys API and the `current_state` query show the exact deadline
# at once. It implies every path patch before it (one marker per run); journeys started before it
# keep their path until they continue-as-new.
RETRIGGER_KEEPS_TIMER_PATCH = "retrigger-keeps-timer"
# An exit that arrives while a step's send is being retried (the provider answering 5xx or 429)
# cancels the retries: only an attempt already talking to the provider may still complete, so a
# provider down for hours no longer delivers "your cart is waiting" hours after the purchase.
# Before, the step retried to the end and only later steps were cancelled. Asked only when an
# exit meets a send still running, so other journeys record no marker; a history without the
# marker at that point (an exit during a send before this change) replays the old way.
EXIT_CANCELS_SEND_PATCH = "exit-cancels-retrying-send"
# A send-window deferral sleeps at least DEFER_FLOOR (before: 1 second). A window computed to
# open "now" or in the past (a DST transition, a clock at the boundary) made the journey decide
# again every second, a timer and an activity each, growing its history fast; a test user's
# journey, whose waits pass on its own clock, spun without even a timer. Asked only when the
# floor lengthens the wait, so deferrals to a window opening later record no marker, and a
# history without the marker there (a deferral before this change) replays the old way.
DEFER_FLOOR_PATCH = "send-window-defer-floor"
DEFER_FLOOR = timedelta(minutes=1)
_UNPATCHED_DEFER_FLOOR = timedelta(seconds=1)
# A journey waiting for its send window shows when it wakes: `state.wake_at` (the `current_state`
# query, the journeys API's `live.next_wake_at`) and the `RejoinNextSendAt` upserted with
# "waiting" are the window's opening, and a re-trigger during that wait (the first step is past
# its own wait) leaves it. Before, both kept the step's passed deadline (a time in the past while
# the journey slept for hours), or none after a re-trigger. The upsert's value changes, so it is
# asked only at a deferral: a history without the marker there (a window wait before this change)
# replays the old way, as the rest of its run does.
WINDOW_WAKE_PATCH = "send-window-wake-time"
# An exit whose cancel reaches a send while an attempt talks to the provider waits for that
# attempt (WAIT_CANCELLATION_COMPLETED). When the attempt then fails retryably (a 503, a timeout),
# Temporal ends the activity with the attempt's error and retry state CANCEL_REQUESTED, not a
# CancelledError: that is the exit's cancel all the same. Before, the step was recorded "delivery
# gave up", fell back to the next channel (a send cancelled at once) and a one-step journey ended
# completed instead of exited. Asked only in that case, so other journeys record no marker.
EXIT_DURING_ATTEMPT_PATCH = "exit-during-failed-attempt"
# Exits of the same request as the trigger that started the journey (after it) come in its start
# input (`JourneyInput.exits`) and apply before the first wait. A test user's waits pass at once,
# so the exit signal sent after the start lost the race to step 0 (an add-to-cart and a purchase
# in one batch still sent the reminder). Asked only when the input carries exits: a run whose
# history lacks the marker there (an older worker ignored the field) replays the old way.
START_EXITS_PATCH = "exits-in-start-input"
# Local activities retry inside the workflow task (the worker heartbeats it), not on the server.
# Bound that: after this budget the step is handed to a durable activity that retries, like the
# unpatched path, until the store answers (the store activities are idempotent).
LOCAL_STORE_BUDGET = timedelta(minutes=2)
# Provider errors classified permanent by the adapters are returned as results, not raised;
# what is raised is worth retrying (429 honours Retry-After via next_retry_delay).
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    non_retryable_error_types=["ConfigurationError"],
)

_Req = TypeVar("_Req")
_Res = TypeVar("_Res")


@workflow.defn
class JourneyWorkflow:
    @workflow.init
    def __init__(self, inp: JourneyInput) -> None:
        self.inp = inp
        self.state = inp.state.model_copy(deep=True) if inp.state else JourneyState()
        self._woken = False
        self._path_chosen = False
        self._send_cancelled = False  # the running step's send was cancelled by an exit
        self._one_activity_steps = False  # patch STEP_ACTIVITY_PATCH, decided at the run's start
        self._enrolled_at_trigger = False  # patch ENROLL_AT_TRIGGER_PATCH, likewise
        self._own_clock = False  # patch TEST_USER_CLOCK_PATCH (test users only), likewise
        self._keeps_timer = False  # patch RETRIGGER_KEEPS_TIMER_PATCH, likewise
        # The deadline of the first step's running timer (None when not sleeping on one).
        self._sleeping_until: datetime | None = None
        self._pending_attrs: list[SearchAttributeUpdate[Any]] = []  # to go with the next status upsert
        self._in_window_wait = False  # sleeping until the send window opens (patch WINDOW_WAKE_PATCH)

    # ------------------------------------------------------------ signals and queries

    @workflow.signal
    def retrigger(self, t: TriggerSignal) -> None:
        if not self._first_sight(t.event_id):
            return
        st = self.state
        st.trigger_count += 1
        st.skus = list(dict.fromkeys([*t.skus, *st.skus]))[:MAX_SKUS]
        st.trigger_event_ids = [t.event_id, *st.trigger_event_ids][:MAX_TRIGGER_EVENTS]
        at = self._trigger_time()
        if st.first_trigger_at is None:
            st.first_trigger_at = at
        if st.step_index == 0 and st.status in ("triggered", "waiting") and not self._in_window_wait:
            # Delivery relevancy: the first message waits from the latest trigger.
            st.last_trigger_at = at
            if self._postpones_running_timer():
                # The running timer fires first; the wait then sleeps the rest (no new timer now).
                # `RejoinNextSendAt` keeps the timer's deadline (the journey's next wake-up, a lower
                # bound of the send) until then: an upsert per re-trigger was most of its server cost.
                assert st.plan is not None  # a timer runs only once the plan is known
                st.wake_at = self._first_step_deadline()
                workflow.set_current_details(_waiting_details(st.wake_at, st.plan.steps[0].name))
                return
            st.wake_at = None
            self._woken = True

    def _postpones_running_timer(self) -> bool:
        """Whether a re-trigger may leave the first step's running timer as it is (patch
        RETRIGGER_KEEPS_TIMER_PATCH): the timer fires no later than the new deadline, and the
        history is not long enough to continue as new (which needs the wait to wake)."""
        return (
            self._keeps_timer
            and self._sleeping_until is not None
            and self._first_step_deadline() >= self._sleeping_until
            and not workflow.info().is_continue_as_new_suggested()
        )

    def _trigger_time(self) -> datetime:
        """When the trigger being applied happened, in workflow time.

        The trigger that started the journey happened when Rejoin received its event
        (`inp.triggered_at`, patch STEP_ACTIVITY_PATCH): its wait runs from then, as the API
        showed at the start, however long the first workflow task queued. Later triggers are
        signals applied as they arrive. Signals are applied before `run` starts, so the patch is
        asked here too (memoised: the same answer as in `run`).
        """
        now = self._now()
        first = self.inp.state is None and self.state.trigger_count == 1 and self.inp.triggered_at is not None
        if first:
            self._choose_path()
            if self._one_activity_steps:
                assert self.inp.triggered_at is not None
                return min(self.inp.triggered_at, now)  # never ahead of the journey's own clock
        return now

    @workflow.signal
    def exit(self, e: ExitSignal) -> None:
        if not self._first_sight(e.event_id):
            return
        if e.reason == "purchase_of_trigger_item" and not set(e.skus) & set(self.state.skus):
            return
        if self.state.exit_reason is None:
            self.state.exit_reason = e.reason
        self._woken = True

    @workflow.query
    def current_state(self) -> JourneyView:
        st = self.state
        return JourneyView(
            journey_id=st.journey_id,
            status=st.status,
            variation_id=st.plan.variation_id if st.plan else None,
            step_index=st.step_index,
            total_steps=len(st.plan.steps) if st.plan else 0,
            # Only a waiting journey has a wake-up of its own (a send being retried has none).
            next_wake_at=st.wake_at if st.status == "waiting" else None,
            exit_reason=st.exit_reason,
            trigger_count=st.trigger_count,
            decisions=st.decisions,
        )

    # ------------------------------------------------------------ the journey

    @workflow.run
    async def run(self, inp: JourneyInput) -> JourneyResult:
        st = self.state
        self._choose_path()
        self._apply_start_exits()
        if st.last_trigger_at is None:
            st.last_trigger_at = st.first_trigger_at or self._now()
        if st.plan is None:
            st.plan = await self._plan(inp)
            variation = search.VARIATION_ID.value_set(st.plan.variation_id)
            if self._one_activity_steps:
                self._pending_attrs.append(variation)  # one upsert with the first status, if it differs
            else:
                workflow.upsert_search_attributes([variation])
            if st.plan.control:
                return await self._finish("holdout")
        while st.step_index < len(st.plan.steps):
            if not await self._wait_for_step(st.plan):
                return await self._finish("exited")
            if not await self._run_step(st.plan, st.step_index):
                return await self._finish("exited")
            st.step_index += 1
            st.wake_at = None
            self._continue_as_new_if_long()
        return await self._finish("completed")

    def _choose_path(self) -> None:
        """Decide the run's path once, at its first command (the first trigger's signal or `run`).

        Memoised for the run: a journey started before a patch answers False at its first command
        and keeps its own path; a continued-as-new run takes the current one. A new journey the
        API enrolled records only ENROLL_AT_TRIGGER_PATCH, which implies STEP_ACTIVITY_PATCH and,
        for a test user, TEST_USER_CLOCK_PATCH (asked on its own by previews and continued runs).
        """
        if self._path_chosen:
            return
        self._path_chosen = True
        enrolled = self.inp.state is None and self.inp.enrollment is not None
        if workflow.patched(RETRIGGER_KEEPS_TIMER_PATCH):  # implies the path patches before it
            self._keeps_timer = self._one_activity_steps = True
            self._enrolled_at_trigger = enrolled
            self._own_clock = self.inp.is_test
            return
        if enrolled and workflow.patched(ENROLL_AT_TRIGGER_PATCH):
            # Came with TEST_USER_CLOCK_PATCH in one release: it implies it too (one marker).
            self._enrolled_at_trigger = self._one_activity_steps = True
            self._own_clock = self.inp.is_test
            return
        self._one_activity_steps = workflow.patched(STEP_ACTIVITY_PATCH)
        self._own_clock = self.inp.is_test and self._one_activity_steps and workflow.patched(TEST_USER_CLOCK_PATCH)

    def _apply_start_exits(self) -> None:
        """Exits the API sent with the start (patch START_EXITS_PATCH): after the start signal's
        trigger (signals are applied before `run`), as in the request, and before any wait."""
        if self.inp.state is None and self.inp.exits and workflow.patched(START_EXITS_PATCH):
            for e in self.inp.exits:
                self.exit(e)

    def _now(self) -> datetime:
        """The journey's time: workflow time, plus what a test user's waits skipped (own clock)."""
        return workflow.now() + self.state.clock_offset

    def _first_step_deadline(self) -> datetime:
        """Delivery relevancy: the first step is due the trigger wait after the latest trigger."""
        assert self.state.last_trigger_at is not None
        return self.state.last_trigger_at + self.inp.trigger_wait

    def _pass_time(self, wait: timedelta) -> None:
        """A test user's wait, on the journey's own clock: it passes at once."""
        self.state.clock_offset += wait

    async def _plan(self, inp: JourneyInput) -> JourneyPlan:
        """The journey's id and plan: as the API enrolled it at the trigger, else enrolled now."""
        st = self.state
        enrolled = inp.enrollment
        if enrolled is not None and self._enrolled_at_trigger:
            # The API recorded the row (a holdout's as ended already): no enroll, no finish step.
            st.journey_id = enrolled.journey_id
            st.row_ended = enrolled.plan.control
            return enrolled.plan
        if st.journey_id is None:
            st.journey_id = str(workflow.uuid4())
        return await self._enroll()

    async def _enroll(self) -> JourneyPlan:
        assert self.state.journey_id is not None
        return await self._store(
            JourneyActivities.enroll,
            EnrollRequest(
                journey_id=self.state.journey_id,
                workflow_id=workflow.info().workflow_id,
                section_id=self.inp.section_id,
                campaign_id=self.inp.campaign_id,
                campaign_version=self.inp.campaign_version,
                user_id=self.inp.user_id,
                is_test=self.inp.is_test,
                as_of=self._now(),
            ),
            "enroll: allocate variation",
        )

    async def _wait_for_step(self, plan: JourneyPlan) -> bool:
        """Sleep until the step is due; False if the user exited first."""
        st = self.state
        step = plan.steps[st.step_index]
        while True:
            if st.exit_reason is not None:
                return False
            if st.wake_at is None and st.step_index == 0:
                st.wake_at = self._first_step_deadline()
            elif st.wake_at is None:
                st.wake_at = self._now() + (step.wait or timedelta())
            remaining = st.wake_at - self._now()
            if remaining <= timedelta():
                return True
            self._set_status("waiting", _waiting_details(st.wake_at, step.name))
            if self._own_clock:
                self._pass_time(remaining)
                continue
            self._woken = False
            self._sleeping_until = st.wake_at if st.step_index == 0 else None
            try:
                await workflow.wait_condition(
                    lambda: self._woken, timeout=remaining, timeout_summary=f"wait before {step.name}"
                )
            except TimeoutError:
                pass
            finally:
                self._sleeping_until = None
            self._continue_as_new_if_long()

    async def _run_step(self, plan: JourneyPlan, index: int) -> bool:
        """Decide and deliver one step, falling back to the next channel after a permanent failure.

        False when the user exited while the step waited for their send window.
        """
        step = plan.steps[index]
        self._set_status("sending", f"sending step '{step.name}'")
        excluded: list[str] = []
        while True:
            if self._one_activity_steps:
                outcome = await self._send_step(index, excluded, last=index == len(plan.steps) - 1)
            else:
                outcome = await self._decide_then_deliver(index, excluded)
            decision, result = outcome.decision, outcome.delivery
            if decision.action == "defer" and (self._one_activity_steps or workflow.patched("send-window-defer")):
                if not await self._wait_for_window(decision, step.name):
                    return False
                continue
            if decision.action != "send" or result is None:
                self._record(index, "skipped", decision.reason, decision.channel)
                return True
            if result.status == "accepted":
                self._record(index, "sent", None, decision.channel, result.possible_duplicate)
                self.state.row_ended = outcome.journey_ended
                return True
            # Flagged when an attempt's outcome was unknown: the vendor may have delivered it.
            self._record(index, "failed", result.reason, decision.channel, result.possible_duplicate)
            if self._send_cancelled:
                return False
            if not result.fallback_allowed or decision.channel is None:
                return True
            excluded.append(decision.channel)

    async def _decide_then_deliver(self, index: int, excluded: list[str]) -> StepOutcome:
        """A step attempt of journeys started before STEP_ACTIVITY_PATCH: a decide store step,
        then the delivery activity if it sends."""
        decision = await self._decide(index, excluded)
        if decision.action != "send":
            return StepOutcome(decision=decision)
        return StepOutcome(decision=decision, delivery=await self._deliver(index, decision))

    async def _send_step(self, index: int, excluded: list[str], *, last: bool) -> StepOutcome:
        st = self.state
        assert st.journey_id is not None
        sending = workflow.start_activity_method(
            JourneySteps.send_step,
            StepRequest(
                journey_id=st.journey_id,
                section_id=self.inp.section_id,
                campaign_id=self.inp.campaign_id,
                campaign_version=self.inp.campaign_version,
                user_id=self.inp.user_id,
                step_index=index,
                as_of=self._now(),
                exclude_channels=list(excluded),
                skus=list(st.skus),
                trigger_event_ids=list(st.trigger_event_ids),
                last_step=last,
            ),
            start_to_close_timeout=self.inp.delivery_timeout,
            schedule_to_close_timeout=self.inp.delivery_budget,
            retry_policy=DELIVERY_RETRY,
            # A cancel reaches an attempt only between attempts (sends do not heartbeat): the
            # workflow waits for the attempt talking to the provider, whose answer then counts.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"send step {index}" + (f" (not via {', '.join(excluded)})" if excluded else ""),
        )
        await workflow.wait_condition(lambda: sending.done() or st.exit_reason is not None)
        if not sending.done() and workflow.patched(EXIT_CANCELS_SEND_PATCH):
            sending.cancel()
        try:
            return await sending
        except ActivityError as err:
            cancelled = isinstance(err.cause, CancelledError) or (
                err.retry_state == RetryState.CANCEL_REQUESTED
                and st.exit_reason is not None
                and workflow.patched(EXIT_DURING_ATTEMPT_PATCH)
            )
            self._send_cancelled = cancelled
            # Cancelled by an exit, out of retries (budget spent) or a configuration error: record
            # it and free the cap slot (an attempt the provider accepted meanwhile stays a send).
            reason = f"cancelled: the user exited ({st.exit_reason}) while the send was retried"
            return await self._store(
                JourneyActivities.give_up_step,
                GiveUpStepRequest(
                    journey_id=st.journey_id,
                    decision_key=decision_key(st.journey_id, index, excluded),
                    step_index=index,
                    as_of=self._now(),
                    reason=reason if cancelled else _failure_reason(err),
                ),
                f"give up step {index}" + (" (exited)" if cancelled else ""),
            )

    async def _wait_for_window(self, decision: StepDecision, step_name: str) -> bool:
        """Quiet hours: sleep until the recipient's send window opens; False if they exited first."""
        st = self.state
        assert decision.not_before is not None
        shows_wake = workflow.patched(WINDOW_WAKE_PATCH)
        wait = self._window_wait(decision.not_before) if shows_wake else None
        if wait is not None:
            st.wake_at = self._now() + wait  # what "waiting" upserts below, and the query shows
        self._set_status("waiting", f"step '{step_name}' waits for the send window ({decision.not_before.isoformat()})")
        if wait is None:  # before the patch the floor's marker came after the upsert: keep the order
            wait = self._window_wait(decision.not_before)
        if self._own_clock:
            self._pass_time(wait)
        else:
            self._in_window_wait = shows_wake
            try:
                await workflow.wait_condition(
                    lambda: st.exit_reason is not None, timeout=wait, timeout_summary=f"send window before {step_name}"
                )
            except TimeoutError:
                pass
            finally:
                self._in_window_wait = False
        self._set_status("sending", f"sending step '{step_name}'")
        return st.exit_reason is None

    def _window_wait(self, not_before: datetime) -> timedelta:
        return window_wait(not_before, self._now(), self._defer_floor(not_before))

    def _defer_floor(self, not_before: datetime) -> timedelta:
        """The least a deferral sleeps: DEFER_FLOOR, asked (patch DEFER_FLOOR_PATCH) only when it
        lengthens the wait, so a deferral to a later opening records no marker."""
        if not_before - self._now() < DEFER_FLOOR and workflow.patched(DEFER_FLOOR_PATCH):
            return DEFER_FLOOR
        return _UNPATCHED_DEFER_FLOOR

    async def _decide(self, index: int, excluded: list[str]) -> StepDecision:
        assert self.state.journey_id is not None
        return await self._store(
            JourneyActivities.decide,
            DecideRequest(
                journey_id=self.state.journey_id,
                section_id=self.inp.section_id,
                campaign_id=self.inp.campaign_id,
                campaign_version=self.inp.campaign_version,
                user_id=self.inp.user_id,
                step_index=index,
                as_of=self._now(),
                exclude_channels=list(excluded),
            ),
            f"decide step {index}",
        )

    async def _deliver(self, index: int, decision: StepDecision) -> DeliverResult:
        st = self.state
        assert st.journey_id and decision.channel and decision.integration_id and decision.send_key
        try:
            return await workflow.execute_activity_method(
                Delivery.deliver,
                DeliverRequest(
                    journey_id=st.journey_id,
                    section_id=self.inp.section_id,
                    campaign_id=self.inp.campaign_id,
                    campaign_version=self.inp.campaign_version,
                    user_id=self.inp.user_id,
                    step_index=index,
                    channel=decision.channel,
                    integration_id=decision.integration_id,
                    send_key=decision.send_key,
                    as_of=self._now(),
                    skus=list(st.skus),
                    trigger_event_ids=list(st.trigger_event_ids),
                ),
                start_to_close_timeout=self.inp.delivery_timeout,
                schedule_to_close_timeout=self.inp.delivery_budget,
                retry_policy=DELIVERY_RETRY,
                summary=f"deliver step {index} via {decision.channel}",
            )
        except ActivityError as err:
            # Retries exhausted (budget spent) or a configuration error: record, free the cap slot.
            return await self._store(
                JourneyActivities.give_up,
                GiveUpRequest(
                    journey_id=st.journey_id,
                    send_key=decision.send_key,
                    step_index=index,
                    channel=decision.channel,
                    as_of=self._now(),
                    reason=_failure_reason(err),
                ),
                f"give up step {index}",
            )

    async def _finish(self, status: JourneyStatus) -> JourneyResult:
        st = self.state
        assert st.journey_id is not None
        if status == "exited":
            self._record(st.step_index, "exited", st.exit_reason, None)
        st.status = status
        if not (status in ("completed", "holdout") and st.row_ended):  # else the row says so already
            await self._store(
                JourneyActivities.finish,
                FinishRequest(
                    journey_id=st.journey_id,
                    status=status,
                    exit_reason=st.exit_reason,
                    as_of=self._now(),
                    step_index=st.step_index,
                ),
                f"finish: {status}",
            )
        self._set_status(status, f"journey {status}" + (f" ({st.exit_reason})" if st.exit_reason else ""))
        return JourneyResult(
            journey_id=st.journey_id,
            status=status,
            exit_reason=st.exit_reason,
            sent=sum(1 for d in st.decisions if d.outcome == "sent"),
            decisions=st.decisions,
            runs=st.runs,
        )

    # ------------------------------------------------------------ helpers

    async def _store(self, fn: Callable[[JourneyActivities, _Req], _Res], req: _Req, summary: str) -> _Res:
        """Run a store-only journey activity: local on new journeys, durable on older ones."""
        # `patched` is memoised per run: a journey in flight before this change answers False at
        # its first store step and stays on the durable path for the rest of the run. Journeys on
        # the later STEP_ACTIVITY_PATCH path run them locally without asking (no second marker).
        if self._one_activity_steps or workflow.patched(LOCAL_STORE_PATCH):
            try:
                return await workflow.execute_local_activity_method(
                    fn,
                    req,
                    start_to_close_timeout=STORE_TIMEOUT,
                    schedule_to_close_timeout=LOCAL_STORE_BUDGET,
                    retry_policy=STORE_RETRY,
                    summary=summary,
                )
            except ActivityError as err:
                if isinstance(err.cause, CancelledError):
                    raise
                # Store unavailable for the whole local budget: fall through to a durable
                # activity (server-side retries, survives worker restarts).
        return await workflow.execute_activity_method(
            fn, req, start_to_close_timeout=STORE_TIMEOUT, retry_policy=STORE_RETRY, summary=summary
        )

    def _first_sight(self, event_id: str) -> bool:
        seen = self.state.seen_event_ids
        if event_id in seen:
            return False
        seen.append(event_id)
        if len(seen) > MAX_SEEN_EVENTS:
            del seen[: len(seen) - MAX_SEEN_EVENTS]
        return True

    def _record(
        self, index: int, outcome: str, reason: str | None, channel: str | None, dup: bool = False
    ) -> None:
        self.state.decisions.append(
            DecisionRecord(
                step_index=index,
                outcome=outcome,
                reason=reason,
                channel=channel,
                at=self._now(),
                possible_duplicate=dup,
            )
        )

    def _set_status(self, status: JourneyStatus, details: str) -> None:
        self.state.status = status
        workflow.set_current_details(details)
        next_send_at = self.state.wake_at if status == "waiting" else None
        if self._one_activity_steps and self._shows(status, next_send_at):
            # What the journey shows already (from its start, or a re-trigger that left the
            # deadline as it was) is not written again: one history event less each.
            self._pending_attrs = []
            return
        attrs: list[SearchAttributeUpdate[Any]] = [
            *self._pending_attrs,
            search.JOURNEY_STATUS.value_set(status),
            search.STEP_INDEX.value_set(self.state.step_index),
        ]
        self._pending_attrs = []
        if next_send_at is not None:
            attrs.append(search.NEXT_SEND_AT.value_set(next_send_at))
        else:
            attrs.append(search.NEXT_SEND_AT.value_unset())
        workflow.upsert_search_attributes(attrs)

    def _shows(self, status: JourneyStatus, next_send_at: datetime | None) -> bool:
        """Whether the journey's search attributes already say this (and any pending ones)."""
        current = workflow.info().typed_search_attributes
        wanted: list[tuple[SearchAttributeKey[Any], Any]] = [
            (search.JOURNEY_STATUS, status),
            (search.STEP_INDEX, self.state.step_index),
            (search.NEXT_SEND_AT, next_send_at),
        ]
        wanted += [(u.key, u.value) for u in self._pending_attrs]
        return all(current.get(key) == value for key, value in wanted)

    def _continue_as_new_if_long(self) -> None:
        """Hot carts re-trigger thousands of times: start a fresh history, carrying the state."""
        if workflow.info().is_continue_as_new_suggested():
            self.state.runs += 1
            workflow.continue_as_new(self.inp.model_copy(update={"state": self.state}))


def window_wait(not_before: datetime, now: datetime, floor: timedelta = DEFER_FLOOR) -> timedelta:
    """How long a step deferred to its send window sleeps: until the window opens, and never less
    than `floor`, however the opening was computed (not in the future at a DST or clock edge)."""
    return max(not_before - now, floor)


def _waiting_details(until: datetime, step_name: str) -> str:
    return f"waiting until {until.isoformat()} before step '{step_name}'"


def _failure_reason(err: ActivityError) -> str:
    cause = err.cause
    message = getattr(cause, "message", None) or str(cause or err)
    return f"delivery gave up: {message}"[:200]
