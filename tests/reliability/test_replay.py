"""Workflow replay: recorded histories of representative journeys must replay on today's code.

A change to `JourneyWorkflow` that would break journeys already in flight (a new activity
call, reordered commands) fails here. Histories are recorded by `python -m tests.record_histories`
(which runs `test_record_histories` below with REJOIN_RECORD_HISTORIES=1) and committed.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from tests.helpers import (
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    make_section,
    purchase,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from workflows.journey import JourneyWorkflow

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
RECORDING = os.environ.get("REJOIN_RECORD_HISTORIES") == "1"


def _files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    """A committed journey history replays deterministically on the current JourneyWorkflow."""
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


def test_histories_are_committed() -> None:
    """The replay suite is not empty (an empty folder would make the check above vacuous)."""
    assert len(_files()) >= 4, _files()


@pytest.mark.skipif(not RECORDING, reason="records histories only when REJOIN_RECORD_HISTORIES=1")
async def test_record_histories(
    api: httpx.AsyncClient, env: WorkflowEnvironment, fresh_provider: ProviderServer
) -> None:
    """Run each representative journey and save every run of its history under tests/histories/."""
    HISTORIES.mkdir(exist_ok=True)

    async def save(name: str, sec, cid: str, uid: str) -> None:  # type: ignore[no-untyped-def]
        handle = journey_handle(env.client, sec, cid, uid)
        runs = [w async for w in env.client.list_workflows(f"WorkflowId = '{handle.id}'")]
        for i, run in enumerate(sorted(runs, key=lambda r: r.start_time)):
            hist = await env.client.get_workflow_handle(handle.id, run_id=run.run_id).fetch_history()
            suffix = f"-run{i + 1}" if len(runs) > 1 else ""
            (HISTORIES / f"{name}{suffix}.json").write_text(hist.to_json())

    # 1. Three steps sent through the outbox.
    sec = await make_section(api)
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("A"), step("B", "P1D"), step("C", "P3D")]))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-1"))
    await journey_result(env.client, sec, cid, uid)
    await save("three_steps_completed", sec, cid, uid)

    # 2. Exited by a purchase during the first wait.
    sec = await make_section(api)
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(wait="PT2H"))
    dyid, uid = await reachable_user(api, sec)
    with env.with_time_skipping_disabled():
        await collect(api, sec, dyid, add_to_cart("sku-2"))
        await collect(api, sec, dyid, add_to_cart("sku-3"))
    await collect(api, sec, dyid, purchase([("sku-2", 10.0)]))
    await journey_result(env.client, sec, cid, uid)
    await save("exited_by_purchase", sec, cid, uid)

    # 3. Provider retries (503 then accepted), then a permanent 400 falling back to a skip.
    fresh_provider.script("/replay", Reply(503), Reply(200), Reply(400, {"error": "bad"}))
    sec = await make_section(api)
    await add_integration(api, sec, kind="custom_http", config={"url": fresh_provider.url("/replay")})
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("A"), step("B", "P1D")]))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-4"))
    await journey_result(env.client, sec, cid, uid)
    await save("retry_then_permanent_failure", sec, cid, uid)

    # 4. Hot cart: many re-triggers, continue-as-new, then two steps.
    sec = await make_section(api)
    await add_integration(api, sec)
    cid = await create_campaign(api, sec, cart_campaign(wait="P1D", steps=[step("A"), step("B", "P1D")]))
    dyid, uid = await reachable_user(api, sec)
    with env.with_time_skipping_disabled():
        for i in range(120):
            await collect(api, sec, dyid, add_to_cart(f"sku-{i}"))
    await env.fast_forward(journey_handle(env.client, sec, cid, uid))
    await journey_result(env.client, sec, cid, uid)
    await save("hot_cart_continued_as_new", sec, cid, uid)
