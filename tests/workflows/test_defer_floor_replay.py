"""Replay of a send-window deferral that hits the floor (patch `send-window-defer-floor`), and a
check that every patch `JourneyWorkflow` asks has a committed history recording its marker.

The floor is asked only when it lengthens the wait: a window computed to open "now" or in the past
(a DST transition, a clock at the boundary). No other history reached it, so a change to the
commands of that path (`_wait_for_window`, `_defer_floor`: dropping or moving the patch) went
unnoticed by the replay suite. The history `FLOOR` in `tests/histories/send_window/` is recorded
(only if missing; histories are append-only) by
`REJOIN_RECORD_HISTORIES=1 pytest tests/workflows/test_defer_floor_replay.py -k record`.
Its journey's decide is made to find the window opening at the step's own time, then an hour
before it (the way `test_journey_semantics_fixes.py` makes a window that never seems to open),
then inside it: two floor sleeps, then the send.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import activities.journey as journey_activities
from domain.campaign import CampaignSpec
from store.tables import User
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    reachable_user,
)
from tests.workflows.test_window_wake_time import AFTER, BEFORE
from workflows import journey as journey_module
from workflows.journey import DEFER_FLOOR_PATCH, WINDOW_WAKE_PATCH, JourneyWorkflow

ALL_HISTORIES = Path(__file__).resolve().parent.parent / "histories"
HISTORIES = ALL_HISTORIES / "send_window"
FLOOR = "window_opens_now_defer_floor"
RECORDING = os.environ.get("REJOIN_RECORD_HISTORIES") == "1"
TRIGGER_WAIT = timedelta(hours=1)
CAMPAIGN = "Window at its edge"
# Where the recorded journey's decide finds the window opening, relative to the step's `as_of`
# (at it, then before it); after these it is inside the window and sends.
OPENINGS = [timedelta(), -timedelta(hours=1)]
# DEFER_FLOOR when the history was recorded. A later floor value replays all the same (Temporal
# compares a timer's command, not its duration); tests/workflows/test_journey_semantics_fixes.py
# checks the value.
RECORDED_FLOOR = timedelta(minutes=1)

# Patches with no committed history, each with why. Remove an entry once its history is recorded
# (`test_the_exceptions_are_current` says so).
UNRECORDED: dict[str, str] = {
    "send-window-defer": (
        "asked only on the decide-then-deliver path of journeys started before "
        "`step-in-one-activity`; a journey started on today's code never takes it, so it cannot be recorded"
    ),
}


def _patch_ids(history: dict[str, object]) -> set[str]:
    """The ids of the `core_patch` markers of a history in its JSON form."""
    ids = set()
    events = history["events"]
    assert isinstance(events, list)
    for event in events:
        marker = event.get("markerRecordedEventAttributes")
        if not marker or marker["markerName"] != "core_patch":
            continue
        for detail in marker.get("details", {}).values():
            for payload in detail.get("payloads", []):
                ids.add(json.loads(base64.b64decode(payload["data"]))["id"])
    return ids


def _history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(name, (HISTORIES / f"{name}.json").read_text())


def _timers(history: WorkflowHistory) -> list[timedelta]:
    return [e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() for e in history.events
            if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]  # fmt: skip


# ---------------------------------------------------------------- the floor's history


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "production-runner"])
async def test_defer_floor_history_replays(sandboxed: bool) -> None:
    """A journey deferred twice to a window opening at or before now slept the floor each time,
    then sent: it replays on the current code, in the sandbox and on the production runner."""
    history = _history(FLOOR)
    runner = SandboxedWorkflowRunner() if sandboxed else UnsandboxedWorkflowRunner()
    replayer = Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter, workflow_runner=runner)
    await replayer.replay_workflow(history)


def test_defer_floor_history_took_the_floor_path() -> None:
    """The history took the floor's path: its marker (with the window-wake one it comes after), the
    trigger wait, one floor timer per deferral, and the journey completed."""
    assert {DEFER_FLOOR_PATCH, WINDOW_WAKE_PATCH} <= _patch_ids(json.loads((HISTORIES / f"{FLOOR}.json").read_text()))
    history = _history(FLOOR)
    timers = _timers(history)  # the trigger wait runs from the event's receive time: a little under it
    assert TRIGGER_WAIT - timedelta(minutes=1) < timers[0] <= TRIGGER_WAIT, timers
    assert timers[1:] == [RECORDED_FLOOR] * len(OPENINGS), timers
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED


def test_every_send_window_history_is_replayed() -> None:
    """Each file in tests/histories/send_window/ is one this module or test_window_wake_time.py
    replays (the shared suite in test_replay.py reads only the top folder)."""
    assert {p.stem for p in HISTORIES.glob("*.json")} == {BEFORE, AFTER, FLOOR}


@pytest.mark.skipif(not RECORDING, reason="records histories only when REJOIN_RECORD_HISTORIES=1")
async def test_record_defer_floor_history(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record the floor's history if not recorded yet (histories are append-only)."""
    path = HISTORIES / f"{FLOOR}.json"
    if path.exists():
        pytest.skip(f"{path.name} is recorded")
    await add_integration(api, section)
    window = {"start": "09:00", "end": "21:00", "timezone": "UTC", "outside": "wait"}
    cid = await create_campaign(api, section, cart_campaign(name=CAMPAIGN, wait="PT1H", send_window=window))
    asked: list[datetime] = []
    real = journey_activities._window_defer

    def at_its_edge(spec: CampaignSpec, user: User, as_of: datetime) -> datetime | None:
        if spec.name != CAMPAIGN:
            return real(spec, user, as_of)
        asked.append(as_of)
        return as_of + OPENINGS[len(asked) - 1] if len(asked) <= len(OPENINGS) else None

    monkeypatch.setattr(journey_activities, "_window_defer", at_its_edge)
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-edge", 9.0))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.sent, len(asked)) == ("completed", 1, len(OPENINGS) + 1), (result, asked)
    history = await journey_handle(env.client, section, cid, uid).fetch_history()
    await Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter).replay_workflow(history)
    assert DEFER_FLOOR_PATCH in _patch_ids(json.loads(history.to_json()))
    path.write_text(history.to_json())


# ---------------------------------------------------------------- every patch has a history


def _asked_patches() -> set[str]:
    """Every patch id `workflows/journey.py` asks: its `*_PATCH` constants and the literals passed
    to `workflow.patched` (a call with anything else fails, so no patch escapes this list)."""
    constants = {v for k, v in vars(journey_module).items() if k.endswith("_PATCH") and isinstance(v, str)}
    literals = set()
    for arg in re.findall(r"workflow\.patched\(([^)]*)\)", inspect.getsource(journey_module)):
        if (m := re.fullmatch(r'"([^"]+)"', arg.strip())) is not None:
            literals.add(m.group(1))
        else:
            assert re.fullmatch(r"[A-Z_]+_PATCH", arg.strip()), f"workflow.patched({arg}): name it *_PATCH"
    return constants | literals


def _recorded_patches() -> set[str]:
    return {i for p in ALL_HISTORIES.rglob("*.json") for i in _patch_ids(json.loads(p.read_text()))}


def test_every_patch_has_a_history() -> None:
    """A patch whose path no committed history (tests/histories, recursively) takes would let a
    change to that path break journeys in flight unnoticed: record one, or list it in UNRECORDED."""
    missing = _asked_patches() - _recorded_patches() - set(UNRECORDED)
    assert not missing, f"patches with no recorded history: {sorted(missing)}"


def test_the_exceptions_are_current() -> None:
    """UNRECORDED lists only patches the workflow asks that still have no history."""
    assert set(UNRECORDED) <= _asked_patches(), sorted(set(UNRECORDED) - _asked_patches())
    assert not set(UNRECORDED) & _recorded_patches(), "recorded now: remove it from UNRECORDED"
