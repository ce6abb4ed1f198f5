"""Journey lifecycle against Temporal: start or re-trigger, exit, describe.

Start and re-trigger are one call: signal-with-start on the journey's workflow id, so two
concurrent triggers can never create two journeys. Exits signal the running journey; one that
finds none is reported to the caller (`Dispatched.exits_unmet`), which tells a journey that has
ended (normal) from one whose start is still on its way (the exit must wait for it) and from one
whose workflow was closed outside Rejoin (terminated in the Temporal UI, failed: its row is ended).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import TemporalError
from temporalio.service import RPCError

from api.temporal_errors import missing
from workflows import search
from workflows.journey import JourneyWorkflow
from workflows.models import ExitSignal, JourneyInput, JourneyView, TriggerSignal

RETRIGGER_SIGNAL = "retrigger"  # JourneyWorkflow.retrigger
log = logging.getLogger(__name__)


class JourneyCommand(BaseModel):
    """What an event asks of one journey; stored with the event until dispatched."""

    action: Literal["trigger", "exit"]
    workflow_id: str
    event_id: str
    campaign_id: str
    reason: str | None = None
    skus: list[str] = []
    input: JourneyInput | None = None  # for triggers
    variation_id: str | None = None  # for triggers: the variation enroll will allocate, searchable from the start
    # For exits: the store had the journey active when the event was accepted. Only such an exit
    # that finds no running workflow asks Temporal why (`closed_run`): most exits find none because
    # the person has no journey at all (every purchase sends one per cart campaign), and those must
    # not pay a describe. False in commands stored before this field: they are not asked.
    journey_active: bool = False


@dataclass(frozen=True)
class ClosedRun:
    """The latest run of a workflow id, closed: how (`WorkflowExecutionStatus` name, lower case)
    and the journey it ran (from its start input; None for a run that enrolled itself)."""

    status: str
    journey_id: str | None


@dataclass(frozen=True)
class UnmetExit:
    """An exit that found no running journey. `closed`: the workflow id's latest run has closed
    (asked only for exits of journeys the store had active: `JourneyCommand.journey_active`);
    None when no run exists yet (a start on its way), or it was not asked. `event_id`: the event
    whose exit it is: it waits only for a start enrolled no later than that event."""

    workflow_id: str
    closed: ClosedRun | None = None
    event_id: str | None = None


@dataclass
class Dispatched:
    """What `dispatch_all` found that its caller must act on."""

    # Journeys enrolled at their trigger that never ran, because the trigger found another journey
    # of the person already running: the caller withdraws them (`store.journey_rows.withdraw`).
    unstarted: list[str] = field(default_factory=list)
    # Exits that found no running journey: ended (normal), not started yet because another
    # request's trigger is still on its way, or closed outside Rejoin with its row still active;
    # the caller tells them apart with the store (`api.ingestion.exits_awaiting_start`): an exit
    # waiting for a start must wait, not be dropped.
    exits_unmet: list[UnmetExit] = field(default_factory=list)


async def dispatch(client: Client, task_queue: str, cmd: JourneyCommand, out: Dispatched) -> None:
    """Send one command; what the caller must act on goes to `out` (`Dispatched`)."""
    if cmd.action == "exit":
        if not await exit_journey(client, cmd.workflow_id, _exit_signal(cmd)):
            closed = await closed_run(client, cmd.workflow_id) if cmd.journey_active else None
            out.exits_unmet.append(UnmetExit(cmd.workflow_id, closed, cmd.event_id))
        return
    assert cmd.input is not None
    # Test users' journeys too go through the plain client: their waits pass on the journey's own
    # clock, and server-side time skipping would also fire the waits between a send's retries at
    # once (a vendor's Retry-After ignored: docs/channels.md, "Retries").
    trigger = TriggerSignal(event_id=cmd.event_id, skus=cmd.skus)
    handle = await start_or_retrigger(client, task_queue, cmd.workflow_id, cmd.input, trigger, variation_id=cmd.variation_id)
    if cmd.input.enrollment is None or started_new_run(handle):
        return
    # Only signalled: the running journey is either this enrollment's own (a replay of the very
    # trigger that started it, after a crash before its "dispatched" mark) or another one.
    withdrawn = unrun_enrollment(cmd, await journey_id_of_run(client, cmd.workflow_id, handle.result_run_id))
    if withdrawn is not None:
        out.unstarted.append(withdrawn)


def unrun_enrollment(cmd: JourneyCommand, ran: str | None) -> str | None:
    """The journey id `cmd`'s trigger enrolled, if the journey that took the trigger (`ran`: the
    id its run carries) is another one, so the enrollment never ran; else None."""
    enrollment = cmd.input.enrollment if cmd.input else None
    if enrollment is None or ran == enrollment.journey_id:
        return None
    return enrollment.journey_id


async def dispatch_all(client: Client, task_queue: str, cmds: list[JourneyCommand]) -> Dispatched:
    """Send commands; different journeys in parallel, each journey's commands in event order
    (a trigger then an exit in one batch must not race: the exit would find no journey yet).

    Returns what the caller must act on (`Dispatched`): enrollments that never ran (another
    request started the person's journey first, or a last send had ended the row while its
    workflow was finishing), and exits that found no running journey."""
    by_journey: dict[str, list[JourneyCommand]] = {}
    for c in cmds:
        by_journey.setdefault(c.workflow_id, []).append(c)
    out = Dispatched()

    async def in_order(group: list[JourneyCommand]) -> None:
        for c in with_exits_at_start(group):
            await dispatch(client, task_queue, c, out)

    await asyncio.gather(*(in_order(g) for g in by_journey.values()))
    return out


def with_exits_at_start(group: list[JourneyCommand]) -> list[JourneyCommand]:
    """One journey's commands in event order, each trigger that enrolls a new journey carrying the
    exits that follow it up to the next trigger in its start input (`JourneyInput.exits`).

    A test user's waits pass at once, so an exit signalled after the start (an add-to-cart and a
    purchase in one request) could reach the journey only after step 0 was sent. Carried in the
    start, the exits apply before any wait. They are still signalled after it: if the trigger
    only signalled a journey already running, that journey needs them, and one that has them
    ignores the repeat (it has seen the event id)."""
    out: list[JourneyCommand] = []
    for i, cmd in enumerate(group):
        if cmd.action == "trigger" and cmd.input is not None and cmd.input.enrollment is not None:
            exits = [_exit_signal(c) for c in _until_next_trigger(group[i + 1 :])]
            if exits:
                cmd = cmd.model_copy(update={"input": cmd.input.model_copy(update={"exits": exits})})
        out.append(cmd)
    return out


def _until_next_trigger(cmds: list[JourneyCommand]) -> list[JourneyCommand]:
    exits: list[JourneyCommand] = []
    for c in cmds:
        if c.action == "trigger":
            break
        exits.append(c)
    return exits


def _exit_signal(cmd: JourneyCommand) -> ExitSignal:
    return ExitSignal(event_id=cmd.event_id, reason=cmd.reason or "exit", skus=cmd.skus)


async def journey_id_of_run(client: Client, workflow_id: str, run_id: str | None) -> str | None:
    """The journey id a run carries from its start (an enrollment's, or the state a
    continue-as-new handed on); None for a first run that enrolled itself, or no such run."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        async for ev in handle.fetch_history_events(page_size=1):
            return _journey_id(await _start_input(client, ev))
    except RPCError as exc:
        if missing(exc):
            return None
        raise
    return None


async def _start_input(client: Client, ev: HistoryEvent) -> JourneyInput | None:
    """The input a run started with, from its first history event."""
    payloads = ev.workflow_execution_started_event_attributes.input.payloads
    inp = (await client.data_converter.decode(payloads, [JourneyInput]))[0] if payloads else None
    return inp if isinstance(inp, JourneyInput) else None


def _journey_id(inp: JourneyInput | None) -> str | None:
    """The journey id a run carries from its start: the state a continue-as-new handed on, else
    the API's enrollment (None: a first run that enrolled itself)."""
    if inp is None:
        return None
    if inp.state is not None and inp.state.journey_id is not None:
        return inp.state.journey_id
    return inp.enrollment.journey_id if inp.enrollment is not None else None


async def start_or_retrigger(
    client: Client,
    task_queue: str,
    workflow_id: str,
    inp: JourneyInput,
    trigger: TriggerSignal,
    *,
    variation_id: str | None = None,
) -> WorkflowHandle[Any, Any]:
    """Signal-with-start: start the journey, or signal it if it runs (`started_new_run` tells)."""
    handle = await client.start_workflow(
        JourneyWorkflow.run,
        inp,
        id=workflow_id,
        task_queue=task_queue,
        start_signal=RETRIGGER_SIGNAL,
        start_signal_args=[trigger],
        search_attributes=TypedSearchAttributes(_start_attributes(inp, variation_id)),
        static_summary=f"campaign {inp.campaign_id} v{inp.campaign_version} for user {inp.user_id}",
    )
    return handle


def started_new_run(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the signal-with-start that returned `handle` started a run rather than signalled one.

    The server answers it (`SignalWithStartWorkflowExecutionResponse.started`); temporalio 1.35
    keeps that response on the handle without a public accessor (its `first_execution_run_id` is
    set in both cases), so it is read here, in one place, and pinned by
    tests/api/test_enroll_at_trigger.py. Unknown counts as started: nothing is withdrawn.
    """
    response = getattr(handle, "_start_workflow_response", None)
    started = getattr(response, "started", None)
    return True if started is None else bool(started)


def _start_attributes(inp: JourneyInput, variation_id: str | None) -> list[SearchAttributePair[Any]]:
    """What a new journey is searchable by from its start (ignored when the journey runs already).

    A journey whose trigger time is known starts as it will be at once: waiting for its first
    step until `triggered_at + trigger_wait`, in the variation allocation picks; the workflow
    upserts only what turns out different (a history event each).
    """
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(search.SECTION_ID, inp.section_id),
        SearchAttributePair(search.CAMPAIGN_ID, inp.campaign_id),
        SearchAttributePair(search.USER_ID, inp.user_id),
    ]
    if inp.triggered_at is None:
        return [*pairs, SearchAttributePair(search.JOURNEY_STATUS, "triggered")]
    pairs += [
        SearchAttributePair(search.JOURNEY_STATUS, "waiting"),
        SearchAttributePair(search.STEP_INDEX, 0),
        SearchAttributePair(search.NEXT_SEND_AT, inp.triggered_at + inp.trigger_wait),
    ]
    if variation_id is not None:
        pairs.append(SearchAttributePair(search.VARIATION_ID, variation_id))
    return pairs


async def exit_journey(client: Client, workflow_id: str, signal: ExitSignal) -> bool:
    """Signal an exit; False when there is no running journey to exit."""
    try:
        await client.get_workflow_handle(workflow_id).signal(JourneyWorkflow.exit, signal)
    except RPCError as exc:
        if missing(exc):
            return False
        raise
    return True


async def latest_run(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription | None:
    """The workflow id's latest run, described; None if the id never ran."""
    try:
        return await handle.describe()
    except RPCError as exc:
        if missing(exc):
            return None
        raise


# Statuses of a latest run that no start will follow by itself (CONTINUED_AS_NEW is never the latest).
_CLOSED = (
    WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED, WorkflowExecutionStatus.TIMED_OUT,
)  # fmt: skip


async def closed_run(client: Client, workflow_id: str) -> ClosedRun | None:
    """The workflow id's latest run if it has closed; None if no run exists (a start still on its
    way) or one runs (it started since the exit missed it: the sweeper's replay will reach it).

    Two calls, only for an exit that found no workflow of a journey the store has active (rare):
    the run's status, then the journey id its start input carries, since a person's journeys of a
    campaign share the workflow id and the closed run may be an earlier journey's."""
    desc = await latest_run(client.get_workflow_handle(workflow_id))
    if desc is None or desc.status not in _CLOSED:
        return None
    return ClosedRun(desc.status.name.lower(), await journey_id_of_run(client, workflow_id, desc.run_id))


@dataclass(frozen=True)
class AppliedTrigger:
    """A trigger the journey's ended latest run had already seen; `journey_id`: that run's journey."""

    journey_id: str | None


async def trigger_already_applied(client: Client, workflow_id: str, event_id: str) -> AppliedTrigger | None:
    """Whether the journey's latest run has *ended* having seen this trigger event (None if not).

    For the sweeper: an event whose dispatch went through but whose "dispatched" mark was lost
    (a crash in between) is replayed. A running journey ignores an event id it has seen, but a
    signal-with-start to an ended journey would start a second one and send again; so for an
    ended run the history is read (its start input carries the ids seen by earlier runs of a
    continue-as-new chain, its signals the rest).
    """
    handle = client.get_workflow_handle(workflow_id)
    desc = await latest_run(handle)
    if desc is None:
        return None
    if desc.status == WorkflowExecutionStatus.RUNNING:
        return None  # the signal is harmless: the journey deduplicates by event id
    started: JourneyInput | None = None
    async for ev in handle.fetch_history_events():
        if ev.HasField("workflow_execution_started_event_attributes"):
            started = await _start_input(client, ev)
            if started is not None and started.state is not None and event_id in started.state.seen_event_ids:
                return AppliedTrigger(_journey_id(started))
        elif ev.HasField("workflow_execution_signaled_event_attributes"):
            attrs = ev.workflow_execution_signaled_event_attributes
            if attrs.signal_name == RETRIGGER_SIGNAL and attrs.input.payloads:
                signal = (await client.data_converter.decode(attrs.input.payloads, [TriggerSignal]))[0]
                if isinstance(signal, TriggerSignal) and signal.event_id == event_id:
                    return AppliedTrigger(_journey_id(started))
    return None


@dataclass(frozen=True)
class Live:
    """A journey's live view: its latest run's state (`view`, None when the run has closed), or
    why it could not be read (`unavailable`); the rest of the journey comes from the store."""

    view: JourneyView | None = None
    unavailable: str | None = None
    # A send whose provider asked to wait (a 429's Retry-After) or failed retryably is an activity
    # in its retry backoff: when Temporal runs the next attempt. The workflow knows no wake time
    # of its own while it sends (`view.next_wake_at` is null then), only the server does.
    next_attempt_at: datetime | None = None


def next_attempt_at(desc: WorkflowExecutionDescription) -> datetime | None:
    """The earliest next attempt of the run's activities waiting out a retry backoff, if any."""
    times = [
        pending.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
        for pending in desc.raw_description.pending_activities
        if pending.HasField("next_attempt_schedule_time")
    ]
    return min(times, default=None)


async def describe(client: Client, workflow_id: str) -> Live:
    """The live state of the journey's latest run. Never raises for Temporal's sake: the live view
    is one part of an answer the store gives, and a Temporal error only leaves it out, saying why."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if missing(exc):  # retention removed it, or its start never reached Temporal
            return Live(unavailable="Temporal has no run of the journey's workflow")
        log.warning("live view of %s: Temporal %s: %s", workflow_id, exc.status.name, exc.message)
        return Live(unavailable=f"Temporal {exc.status.name}: live state not read")
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return Live()
    try:
        view = await asyncio.wait_for(handle.query(JourneyWorkflow.current_state), timeout=5)
        return Live(view, next_attempt_at=next_attempt_at(desc))
    except TimeoutError:
        return Live(unavailable="no worker answered the journey's state query within 5 s")
    except TemporalError as exc:  # RPCError, the query failed or was rejected (the run closed meanwhile)
        log.warning("live view of %s: query failed: %r", workflow_id, exc)
        reason = f"Temporal {exc.status.name}" if isinstance(exc, RPCError) else type(exc).__name__
        return Live(unavailable=f"the journey's state query failed ({reason})")


def trigger_input(
    section_id: str, campaign_id: str, version: int, user_id: str, wait: timedelta, is_test: bool,
    delivery_timeout: timedelta, triggered_at: datetime | None = None,
) -> JourneyInput:  # fmt: skip
    """A journey's start input; `triggered_at`: when the event was received (default: now)."""
    return JourneyInput(
        section_id=section_id,
        campaign_id=campaign_id,
        campaign_version=version,
        user_id=user_id,
        trigger_wait=wait,
        is_test=is_test,
        delivery_timeout=delivery_timeout,
        triggered_at=triggered_at or datetime.now(UTC),
    )
