"""Workflow replay: recorded histories of representative journeys must replay on today's code.

A change to `JourneyWorkflow` that would break journeys already in flight (a new activity
call, reordered commands) fails here. Histories are recorded by `python -m tests.record_histories`
(which runs `test_record_histories` below with REJOIN_RECORD_HISTORIES=1) and committed.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from tests.helpers import (
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    eventually,
    journey_handle,
    journey_result,
    make_section,
    purchase,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from workflows.journey import (
    ENROLL_AT_TRIGGER_PATCH,
    LOCAL_STORE_PATCH,
    EXIT_CANCELS_SEND_PATCH,
    RETRIGGER_KEEPS_TIMER_PATCH,
    START_EXITS_PATCH,
    STEP_ACTIVITY_PATCH,
    TEST_USER_CLOCK_PATCH,
    JourneyWorkflow,
)

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
RECORDING = os.environ.get("REJOIN_RECORD_HISTORIES") == "1"


def _files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "production-runner"])
@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path, sandboxed: bool) -> None:
    """A committed journey history replays deterministically on the current JourneyWorkflow,
    in the sandbox (strict) and on the unsandboxed runner production workers use by default."""
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    runner = {} if sandboxed else {"workflow_runner": UnsandboxedWorkflowRunner()}
    replayer = Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter, **runner)
    await replayer.replay_workflow(history)


def test_histories_are_committed() -> None:
    """The replay suite is not empty (an empty folder would make the check above vacuous)."""
    assert len(_files()) >= 4, _files()


def test_committed_histories_are_the_recorded_list() -> None:
    """Every history of `RECORDED` is committed, and every committed one is listed there."""
    listed = {name for name, _ in RECORDED}
    committed = {re.sub(r"-run\d+$", "", p.stem) for p in _files()}
    assert committed == listed, (sorted(listed - committed), sorted(committed - listed))


def _markers(path: Path) -> list[tuple[str, str]]:
    """(marker name, decoded payload data) of every marker event in a recorded history."""
    out = []
    for event in json.loads(path.read_text())["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if marker:
            payloads = [p for d in marker.get("details", {}).values() for p in d.get("payloads", [])]
            out.append((marker["markerName"], " ".join(base64.b64decode(p.get("data", "")).decode() for p in payloads)))
    return out


def test_step_activity_path_is_recorded() -> None:
    """Histories cover journeys whose steps are one `journey.send_step` activity each."""
    markers = {p.stem: _markers(p) for p in _files()}
    patched = {n for n, ms in markers.items() if any(k == "core_patch" and STEP_ACTIVITY_PATCH in d for k, d in ms)}
    texts = {name: (HISTORIES / f"{name}.json").read_text() for name in patched}
    assert not [n for n, text in texts.items() if '"journey.decide"' in text], "a patched journey decided apart"
    assert len([n for n, text in texts.items() if '"journey.send_step"' in text]) >= 3, sorted(patched)


def test_enroll_at_trigger_path_is_recorded() -> None:
    """Histories cover journeys the API enrolled (no enroll step; that patch's marker only)."""
    markers = {p.stem: _markers(p) for p in _files()}
    enrolled = {n for n, ms in markers.items() if any(k == "core_patch" and ENROLL_AT_TRIGGER_PATCH in d for k, d in ms)}
    first_runs = {n for n in enrolled if not n.endswith(("-run2", "-run3", "-run4", "-run5"))}
    assert len(first_runs) >= 3, sorted(enrolled)
    texts = {name: (HISTORIES / f"{name}.json").read_text() for name in first_runs}
    assert not [n for n, text in texts.items() if '"journey.enroll"' in text], "an API-enrolled journey enrolled again"


def test_test_user_clock_path_is_recorded() -> None:
    """Histories cover test users' journeys on their own clock (no timers), enrolled or previewed."""
    own = [p for p in _files() if p.stem.startswith("test_user_clock_")]
    assert len(own) >= 2, own
    assert not [p for p in own if '"EVENT_TYPE_TIMER_STARTED"' in p.read_text()], "a test user's journey slept"
    # The preview enrolls itself and records the clock patch; the enrolled one has it implied.
    assert any(k == "core_patch" and TEST_USER_CLOCK_PATCH in d for p in own for k, d in _markers(p)), own


def test_retrigger_keeps_timer_path_is_recorded() -> None:
    """Histories cover journeys whose re-triggers keep the running timer (that patch's marker only),
    among them one re-triggered during its first wait."""
    markers = {p.stem: _markers(p) for p in _files()}
    kept = {n for n, ms in markers.items() if any(k == "core_patch" and RETRIGGER_KEEPS_TIMER_PATCH in d for k, d in ms)}
    assert len({n for n in kept if not n.endswith(("-run2", "-run3", "-run4", "-run5"))}) >= 4, sorted(kept)
    # Two add-to-carts, then a purchase, all during the first wait: one timer, cancelled by the exit.
    text = (HISTORIES / "retrigger_keeps_timer_exited_by_purchase.json").read_text()
    assert text.count('"EVENT_TYPE_TIMER_STARTED"') == 1 and text.count('"EVENT_TYPE_TIMER_CANCELED"') == 1


def test_exit_cancelling_a_retried_send_is_recorded() -> None:
    """Histories cover an exit during a retried send from before the patch (the send retried to
    the end) and after it (one marker, then the activity's cancellation)."""
    before = (HISTORIES / "exit_during_retried_send.json").read_text()
    after = HISTORIES / "exit_cancels_retrying_send.json"
    assert EXIT_CANCELS_SEND_PATCH not in before and '"EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED"' not in before
    assert [d for k, d in _markers(after) if k == "core_patch" and EXIT_CANCELS_SEND_PATCH in d]
    assert '"EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED"' in after.read_text()
    assert '"EVENT_TYPE_ACTIVITY_TASK_CANCELED"' in after.read_text()


def test_exits_in_the_start_input_are_recorded() -> None:
    """A history covers a journey ended by an exit that came in its start input: one marker, no
    step sent, and no timer (the exit applied before the first wait)."""
    path = HISTORIES / "exits_in_start_input_test_user.json"
    assert [d for k, d in _markers(path) if k == "core_patch" and START_EXITS_PATCH in d]
    text = path.read_text()
    assert '"journey.send_step"' not in text and '"EVENT_TYPE_TIMER_STARTED"' not in text


def test_both_store_step_paths_are_recorded() -> None:
    """Histories cover journeys from before and after the store steps became local activities."""
    markers = {p.stem: _markers(p) for p in _files()}
    patched = {n for n, ms in markers.items() if any(k == "core_patch" and LOCAL_STORE_PATCH in d for k, d in ms)}
    assert patched and all(any(k == "core_local_activity" for k, _ in markers[n]) for n in patched), markers
    assert set(markers) - patched, "no history of the durable-activity path left"


# Every recorded history (file name, scenario), by the patch that was newest when it was recorded;
# a new path patch appends its own. Histories are append-only (`_wanted`): those recorded on older
# code are what journeys in flight replay.
RECORDED: list[tuple[str, str]] = [
    ("three_steps_completed", "three_steps"),
    ("exited_by_purchase", "exited_by_purchase"),
    ("retry_then_permanent_failure", "retry_then_permanent_failure"),
    ("hot_cart_continued_as_new", "hot_cart"),
    # Patch "store-steps-local-activities".
    ("local_store_steps_retry_then_permanent_failure", "retry_then_permanent_failure"),
    # Patch "step-in-one-activity".
    ("step_activity_three_steps_completed", "three_steps"),
    ("step_activity_exited_by_purchase", "exited_by_purchase"),
    ("step_activity_retry_then_permanent_failure", "retry_then_permanent_failure"),
    ("step_activity_hot_cart_continued_as_new", "hot_cart"),
    # Patch "enroll-at-trigger".
    ("enrolled_at_trigger_three_steps_completed", "three_steps"),
    ("enrolled_at_trigger_exited_by_purchase", "exited_by_purchase"),
    ("enrolled_at_trigger_retry_then_permanent_failure", "retry_then_permanent_failure"),
    ("enrolled_at_trigger_hot_cart_continued_as_new", "hot_cart"),
    # Patch "test-user-own-clock".
    ("test_user_clock_three_steps_completed", "test_user_three_steps"),
    ("test_user_clock_preview", "preview"),
    # Patch "retrigger-keeps-timer".
    ("retrigger_keeps_timer_three_steps_completed", "three_steps"),
    ("retrigger_keeps_timer_exited_by_purchase", "exited_by_purchase"),
    ("retrigger_keeps_timer_retry_then_permanent_failure", "retry_then_permanent_failure"),
    ("retrigger_keeps_timer_hot_cart_continued_as_new", "hot_cart"),
    ("retrigger_keeps_timer_test_user_three_steps", "test_user_three_steps"),
    # Before patch "exit-cancels-retrying-send": the exit waits for the retried send to end.
    ("exit_during_retried_send", "exit_during_retried_send"),
    # Patch "exit-cancels-retrying-send".
    ("exit_cancels_retrying_send", "exit_during_retried_send"),
    # Patch "exits-in-start-input": a test user's add-to-cart and purchase in one request.
    ("exits_in_start_input_test_user", "test_user_trigger_and_purchase"),
    # Patch "exit-during-failed-attempt": the attempt the exit waited for answers 503.
    ("exit_during_failed_attempt", "exit_during_failed_attempt"),
]


def _wanted(name: str) -> bool:
    """Histories are append-only: those recorded on older code are what in-flight journeys replay."""
    return not any(HISTORIES.glob(f"{name}.json")) and not any(HISTORIES.glob(f"{name}-run*.json"))


@pytest.mark.skipif(not RECORDING, reason="records histories only when REJOIN_RECORD_HISTORIES=1")
async def test_record_histories(
    api: httpx.AsyncClient, env: WorkflowEnvironment, fresh_provider: ProviderServer
) -> None:
    """Run each representative journey not yet recorded and save every run of its history."""
    HISTORIES.mkdir(exist_ok=True)

    async def save(name: str, sec, cid: str, uid: str) -> None:  # type: ignore[no-untyped-def]
        handle = journey_handle(env.client, sec, cid, uid)
        runs = [w async for w in env.client.list_workflows(f"WorkflowId = '{handle.id}'")]
        for i, run in enumerate(sorted(runs, key=lambda r: r.start_time)):
            hist = await env.client.get_workflow_handle(handle.id, run_id=run.run_id).fetch_history()
            suffix = f"-run{i + 1}" if len(runs) > 1 else ""
            (HISTORIES / f"{name}{suffix}.json").write_text(hist.to_json())

    scenarios = {
        "three_steps": lambda name: _three_steps(api, env, save, name),
        "test_user_three_steps": lambda name: _three_steps(api, env, save, name, test_user=True),
        "exited_by_purchase": lambda name: _exited_by_purchase(api, env, save, name),
        "retry_then_permanent_failure": lambda name: _retry_then_permanent_failure(api, env, fresh_provider, save, name),
        "hot_cart": lambda name: _hot_cart(api, env, save, name),
        "preview": lambda name: _preview(api, env, save, name),
        "exit_during_retried_send": lambda name: _exit_during_retried_send(api, env, fresh_provider, save, name),
        "test_user_trigger_and_purchase": lambda name: _test_user_trigger_and_purchase(api, env, save, name),
        "exit_during_failed_attempt": lambda name: _exit_during_failed_attempt(api, env, fresh_provider, save, name),
    }
    for name, scenario in RECORDED:
        if _wanted(name):
            await scenarios[scenario](name)


async def _three_steps(api, env, save, name: str, test_user: bool = False) -> None:  # type: ignore[no-untyped-def]
    """1. Three steps sent through the outbox (for a flagged test user: on its own clock)."""
    sec = await make_section(api)
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("A"), step("B", "P1D"), step("C", "P3D")]))
    dyid, uid = await reachable_user(api, sec)
    if test_user:
        await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=sec.mgmt)
    await collect(api, sec, dyid, add_to_cart("sku-1"))
    await journey_result(env.client, sec, cid, uid)
    await save(name, sec, cid, uid)


async def _exited_by_purchase(api, env, save, name: str) -> None:  # type: ignore[no-untyped-def]
    """2. Exited by a purchase during the first wait."""
    sec = await make_section(api)
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(wait="PT2H"))
    dyid, uid = await reachable_user(api, sec)
    with env.with_time_skipping_disabled():
        await collect(api, sec, dyid, add_to_cart("sku-2"))
        handle = journey_handle(env.client, sec, cid, uid)

        async def waiting() -> None:  # the re-trigger below finds the first wait's timer running
            assert (await handle.query(JourneyWorkflow.current_state)).status == "waiting"

        await eventually(waiting)
        await collect(api, sec, dyid, add_to_cart("sku-3"))
    await collect(api, sec, dyid, purchase([("sku-2", 10.0)]))
    await journey_result(env.client, sec, cid, uid)
    await save(name, sec, cid, uid)


async def _retry_then_permanent_failure(api, env, fresh_provider, save, name: str) -> None:  # type: ignore[no-untyped-def]
    """3. Provider retries (503 then accepted), then a permanent 400 falling back to a skip."""
    path = f"/replay/{name}"
    fresh_provider.script(path, Reply(503), Reply(200), Reply(400, {"error": "bad"}))
    sec = await make_section(api)
    await add_integration(api, sec, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("A"), step("B", "P1D")]))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-4"))
    await journey_result(env.client, sec, cid, uid)
    await save(name, sec, cid, uid)


async def _hot_cart(api, env, save, name: str) -> None:  # type: ignore[no-untyped-def]
    """4. Hot cart: many re-triggers, continue-as-new, then two steps."""
    sec = await make_section(api)
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(wait="P1D", steps=[step("A"), step("B", "P1D")]))
    dyid, uid = await reachable_user(api, sec)
    with env.with_time_skipping_disabled():
        for i in range(120):
            await collect(api, sec, dyid, add_to_cart(f"sku-{i}"))
    await env.fast_forward(journey_handle(env.client, sec, cid, uid))
    await journey_result(env.client, sec, cid, uid)
    await save(name, sec, cid, uid)


async def _preview(api, env, save, name: str) -> None:  # type: ignore[no-untyped-def]
    """A preview: a test user's journey started without an enrollment (it enrolls itself)."""
    sec = await make_section(api)
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("A"), step("B", "P2D")]))
    dyid, uid = await reachable_user(api, sec)
    await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=sec.mgmt)
    r = await api.post(f"/api/v1/campaigns/{cid}/preview", json={"user": dyid}, headers=sec.mgmt)
    assert r.status_code == 202, r.text
    await journey_result(env.client, sec, cid, uid)
    await save(name, sec, cid, uid)


async def _exit_during_retried_send(api, env, fresh_provider, save, name: str) -> None:  # type: ignore[no-untyped-def]
    """A purchase while the only step's send is retried against a provider answering 503."""
    path = f"/replay/{name}"
    fresh_provider.default(path, Reply(503))
    sec = await make_section(api)
    await add_integration(api, sec, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("A")]))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-5"))

    async def retried() -> None:
        assert len(fresh_provider.to(path)) >= 2

    await eventually(retried)
    await collect(api, sec, dyid, purchase([("sku-5", 10.0)]))
    await journey_result(env.client, sec, cid, uid)
    await save(name, sec, cid, uid)


async def _exit_during_failed_attempt(api, env, fresh_provider, save, name: str) -> None:  # type: ignore[no-untyped-def]
    """A purchase while the only step's first attempt is at a provider that then answers 503."""
    path = f"/replay/{name}"
    fresh_provider.default(path, Reply(503, delay=2.0))
    sec = await make_section(api)
    await add_integration(api, sec, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("A")]))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-7"))

    async def at_provider() -> None:
        assert len(fresh_provider.to(path)) >= 1

    await eventually(at_provider)
    await collect(api, sec, dyid, purchase([("sku-7", 10.0)]))
    await journey_result(env.client, sec, cid, uid)
    await save(name, sec, cid, uid)


async def _test_user_trigger_and_purchase(api, env, save, name: str) -> None:  # type: ignore[no-untyped-def]
    """A test user's add-to-cart and purchase in one request: the exit comes in the start input."""
    sec = await make_section(api)
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, sec)
    await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=sec.mgmt)
    await collect(api, sec, dyid, add_to_cart("sku-6"), purchase([("sku-6", 10.0)]))
    await journey_result(env.client, sec, cid, uid)
    await save(name, sec, cid, uid)
