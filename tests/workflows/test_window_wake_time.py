"""A journey waiting for its send window shows when it really wakes (patch `send-window-wake-time`).

Before, the window wait kept the step's passed deadline: the `current_state` query's
`next_wake_at` (the journeys API's `live.next_wake_at`) and `RejoinNextSendAt` showed a time in
the past while the journey slept until the window opened. Now both show the window's opening;
a re-trigger during the window wait leaves it; a journey not waiting (a send being retried)
shows no next wake-up in the query, as its search attribute shows none.

Replay histories of a window wait from before and after the patch are in `HISTORIES` (recorded by
`REJOIN_RECORD_HISTORIES=1 pytest tests/workflows/test_window_wake_time.py -k record`); the
first was recorded on the code before the patch and cannot be recorded again.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    eventually,
    journey_handle,
    journey_result,
    outbox,
    purchase,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from workflows import journey as journey_module
from workflows import search
from workflows.journey import JourneyWorkflow
from workflows.models import DecisionRecord, JourneyView

HISTORIES = Path(__file__).resolve().parent.parent / "histories" / "send_window"
BEFORE = "window_wait_before_wake_patch"  # recorded on the code before the patch: never again
AFTER = "window_wake_time"
RECORDING = os.environ.get("REJOIN_RECORD_HISTORIES") == "1"


def _window_hours_ahead() -> tuple[dict[str, str], datetime]:
    """A UTC send window opening 2-3 hours from now (closed now and five minutes from now), and
    its next opening."""
    now = datetime.now(UTC)
    opens = (now + timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    window = {"start": opens.strftime("%H:%M"), "end": (opens + timedelta(hours=1)).strftime("%H:%M"),
              "timezone": "UTC", "outside": "wait"}  # fmt: skip
    return window, opens


async def _timers(handle: WorkflowHandle[Any, Any]) -> list[timedelta]:
    events = (await handle.fetch_history()).events
    return [e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() for e in events
            if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]  # fmt: skip


async def _in_window_wait(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, wait: str = "PT5M"
) -> tuple[str, str, str, datetime, WorkflowHandle[Any, Any]]:
    """A real user's journey past its trigger wait, sleeping until its send window opens:
    (campaign, dyid, user id, the window's opening, handle). Call with time skipping disabled."""
    await add_integration(api, sec)
    window, opens = _window_hours_ahead()
    cid = await create_campaign(api, sec, cart_campaign(wait=wait, send_window=window))
    dyid, uid = await reachable_user(api, sec)
    handle = journey_handle(env.client, sec, cid, uid)
    await collect(api, sec, dyid, add_to_cart("sku-w", 12.0))

    async def first_wait() -> None:
        assert len(await _timers(handle)) == 1

    await eventually(first_wait)
    assert await env.fast_forward(handle, timedelta(minutes=6))

    async def window_timer() -> None:  # the deferral's timer runs
        assert len(await _timers(handle)) == 2

    await eventually(window_timer)
    return cid, dyid, uid, opens, handle


def _sent_once_at(decisions: list[DecisionRecord], opens: datetime) -> None:
    """One send, as the window opened (the send activity's own time after it)."""
    [sent_at] = [d.at for d in decisions if d.outcome == "sent"]
    assert opens <= sent_at < opens + timedelta(minutes=1), (sent_at, opens)


async def _shows_the_opening(handle: WorkflowHandle[Any, Any], opens: datetime) -> None:
    view = await handle.query(JourneyWorkflow.current_state)
    assert (view.status, view.next_wake_at) == ("waiting", opens), view

    async def searchable() -> None:
        attrs = (await handle.describe()).typed_search_attributes
        assert attrs.get(search.JOURNEY_STATUS) == "waiting", attrs
        assert attrs.get(search.NEXT_SEND_AT) == opens, attrs

    await eventually(searchable, timeout=5)


async def test_a_journey_waiting_for_its_window_shows_the_opening_and_sends_there(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    with env.with_time_skipping_disabled():
        cid, dyid, uid, opens, handle = await _in_window_wait(api, env, section)
        await _shows_the_opening(handle, opens)
        r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
        assert r.status_code == 200, r.text
        [journey] = r.json()
        live = journey["live"]
        assert live["status"] == "waiting" and datetime.fromisoformat(live["next_wake_at"]) == opens, live
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1, result
    _sent_once_at(result.decisions, opens)
    assert len(await outbox(api, section)) == 1
    history = await handle.fetch_history()
    await Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter).replay_workflow(history)
    assert _marked(history)


def _marked(history: WorkflowHistory) -> bool:
    """Whether the history records the window-wake patch's marker."""
    wanted = journey_module.WINDOW_WAKE_PATCH.encode()
    return any(wanted in p.data for e in history.events for d in e.marker_recorded_event_attributes.details.values()
               for p in d.payloads)  # fmt: skip


async def test_a_retrigger_during_the_window_wait_keeps_the_opening(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """The first step is past its wait: a re-trigger adds context but moves no deadline, and the
    query still shows the window's opening (it showed none once a re-trigger cleared it)."""
    with env.with_time_skipping_disabled():
        cid, dyid, uid, opens, handle = await _in_window_wait(api, env, section)
        await collect(api, section, dyid, add_to_cart("sku-x", 8.0))

        async def retriggered() -> JourneyView:
            view = await handle.query(JourneyWorkflow.current_state)
            assert view.trigger_count == 2, view
            return view

        await eventually(retriggered)
        await _shows_the_opening(handle, opens)
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1, result
    _sent_once_at(result.decisions, opens)


async def test_a_send_being_retried_shows_no_next_wake_up(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """While the step's send is retried the journey waits on no deadline of its own: the query
    shows none (it showed the step's passed deadline), as `RejoinNextSendAt` does."""
    path = "/window-wake/retried"
    fresh_provider.default(path, Reply(503))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign(wait="PT5M", steps=[step("A")]))
    dyid, uid = await reachable_user(api, section)
    handle = journey_handle(env.client, section, cid, uid)
    await collect(api, section, dyid, add_to_cart("sku-r", 5.0))

    async def retried() -> None:
        assert len(fresh_provider.to(path)) >= 2

    await eventually(retried)
    view = await handle.query(JourneyWorkflow.current_state)
    assert (view.status, view.next_wake_at) == ("sending", None), view
    assert (await handle.describe()).typed_search_attributes.get(search.NEXT_SEND_AT) is None
    await collect(api, section, dyid, purchase([("sku-r", 5.0)]))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "exited", result


# ---------------------------------------------------------------- replay


def _files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "production-runner"])
@pytest.mark.parametrize("name", [BEFORE, AFTER])
async def test_window_wait_histories_replay(name: str, sandboxed: bool) -> None:
    """A window wait from before the patch (upserting the passed deadline) and after it replay."""
    path = HISTORIES / f"{name}.json"
    history = WorkflowHistory.from_json(name, path.read_text())
    assert _marked(history) == (name == AFTER)
    runner = SandboxedWorkflowRunner() if sandboxed else UnsandboxedWorkflowRunner()
    replayer = Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter, workflow_runner=runner)
    await replayer.replay_workflow(history)


@pytest.mark.skipif(not RECORDING, reason="records histories only when REJOIN_RECORD_HISTORIES=1")
@pytest.mark.parametrize("name", [BEFORE, AFTER])
async def test_record_window_wait_history(
    name: str, api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Record a window wait (with a re-trigger during it) if not recorded yet; histories are
    append-only. The one from before the patch records only on code without it."""
    path = HISTORIES / f"{name}.json"
    if path.exists():
        pytest.skip(f"{path.name} is recorded")
    if name == BEFORE:
        assert not hasattr(journey_module, "WINDOW_WAKE_PATCH"), "only the code before the patch records it"
    with env.with_time_skipping_disabled():
        cid, dyid, uid, _, handle = await _in_window_wait(api, env, section)
        await collect(api, section, dyid, add_to_cart("sku-y", 8.0))

        async def retriggered() -> None:
            assert (await handle.query(JourneyWorkflow.current_state)).trigger_count == 2

        await eventually(retriggered)
        await env.fast_forward(handle)
    await journey_result(env.client, section, cid, uid)
    HISTORIES.mkdir(parents=True, exist_ok=True)
    path.write_text((await handle.fetch_history()).to_json())
