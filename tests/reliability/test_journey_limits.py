"""Journeys at the edges: an exit racing a send, and a long, hot journey under history limits."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.journeys import start_or_retrigger, trigger_input
from settings import Settings
from store.engine import Store
from store.tables import Campaign, Send
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    outbox,
    purchase,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from workflows.ids import journey_workflow_id
from workflows.models import JourneyResult, TriggerSignal


async def _purchase_while_at_provider(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    path: str, steps: list[dict[str, Any]],
) -> JourneyResult:  # fmt: skip
    """A cart journey of `steps` sending to `path`; the purchase comes while its first attempt is at
    the provider (as `path` answers it, scripted by the caller). The journey's end result."""
    at_provider = threading.Event()
    fresh_provider.on_request = lambda r: at_provider.set() if r.path == path else None
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=steps))
    dyid, uid = await reachable_user(api, section)
    try:
        await collect(api, section, dyid, add_to_cart("sku-1"))
        assert await asyncio.get_running_loop().run_in_executor(None, at_provider.wait, 30)
        await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
        return await journey_result(env.client, section, cid, uid)
    finally:
        fresh_provider.on_request = None


async def test_exit_while_send_in_flight_sends_at_most_that_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """A purchase arriving while step 1 is at the provider: that send completes, no later step is sent."""
    path = "/inflight"
    fresh_provider.default(path, Reply(200, {"id": "m"}, delay=1.5))
    steps = [step("First"), step("Second", "PT1H"), step("Third", "P1D")]
    result = await _purchase_while_at_provider(api, env, section, fresh_provider, path, steps)
    assert result.status == "exited" and result.exit_reason == "purchased", result
    assert [d.step_index for d in result.decisions if d.outcome == "sent"] == [0]
    assert len(fresh_provider.to(path)) == 1


async def test_exit_while_a_send_is_retried_cancels_it(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """A purchase arriving while the provider answers 503 and the step's send is being retried:
    the retries stop (a provider down for hours must not deliver the reminder after the purchase),
    the journey ends exited with the purchase as its reason, and the send is recorded as failed,
    cancelled by the exit. A one-step journey: before, its exit was lost and it ended completed."""
    path = "/down"
    fresh_provider.default(path, Reply(503, "down"))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=[step("Only")]))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    for _ in range(200):  # until the send has been retried at least once
        if len(fresh_provider.to(path)) >= 2:
            break
        await asyncio.sleep(0.1)
    assert len(fresh_provider.to(path)) >= 2
    await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "exited" and result.exit_reason == "purchased", result
    assert [(d.outcome, d.step_index) for d in result.decisions] == [("failed", 0), ("exited", 0)], result
    assert "cancelled: the user exited (purchased)" in (result.decisions[0].reason or "")
    attempts = len(fresh_provider.to(path))
    fresh_provider.default(path, Reply(200, {"id": "late"}))
    await asyncio.sleep(4)  # longer than the retry interval: a retry still scheduled would arrive
    assert len(fresh_provider.to(path)) == attempts and not fresh_provider.deliveries
    with store.session() as s:
        send = s.exec(select(Send).where(Send.user_id == uid)).one()
    assert send.status == "failed" and "cancelled" in (send.provider_response or ""), send


async def test_exit_during_an_attempt_that_then_fails_is_the_exits_cancel(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """A purchase arriving while an attempt is at the provider, which then answers 503: Temporal
    ends the send with the 503 (retry state CANCEL_REQUESTED), not a CancelledError. It is the exit's
    cancel: recorded so, no fallback to another channel, the journey exited. Before, the step was
    "delivery gave up", fell back, and the one-step journey ended completed."""
    path = "/slow-then-down"
    fresh_provider.default(path, Reply(503, "down", delay=2.0))
    result = await _purchase_while_at_provider(api, env, section, fresh_provider, path, [step("Only")])
    assert result.status == "exited" and result.exit_reason == "purchased", result
    assert [(d.outcome, d.step_index) for d in result.decisions] == [("failed", 0), ("exited", 0)], result
    assert "cancelled: the user exited (purchased)" in (result.decisions[0].reason or ""), result
    assert len(fresh_provider.to(path)) == 1


async def test_ten_steps_ninety_day_waits_hundreds_of_retriggers_stay_under_history_limits(
    api: httpx.AsyncClient, env: WorkflowEnvironment, settings: Settings, store: Store, worker: Worker,
    section: SectionKeys,
) -> None:  # fmt: skip
    """300 re-triggers then 10 steps 90 days apart: continue-as-new keeps every run short; done in seconds."""
    await add_integration(api, section)
    steps = [step("S0"), *(step(f"S{i}", "P90D") for i in range(1, 10))]
    cid = await create_campaign(api, section, cart_campaign(wait="P90D", steps=steps))
    _, uid = await reachable_user(api, section)
    with store.session() as s:
        version = s.get(Campaign, cid).version  # type: ignore[union-attr]
    wid = journey_workflow_id(section.id, cid, uid)
    inp = trigger_input(section.id, cid, version, uid, timedelta(days=90), False, settings.delivery_timeout)
    started = time.monotonic()
    with env.with_time_skipping_disabled():  # hold the first wait while the re-triggers pour in
        for batch in range(15):
            await asyncio.gather(*(
                start_or_retrigger(env.client, settings.task_queue, wid, inp,
                                   TriggerSignal(event_id=f"evt_{batch}_{i}", skus=[f"sku-{i}"]))
                for i in range(20)
            ))  # fmt: skip
    await env.fast_forward(env.client.get_workflow_handle(wid))  # skip time from here on
    result = await journey_result(env.client, section, cid, uid, timeout=120)
    elapsed = time.monotonic() - started
    assert result.status == "completed", result
    assert [d.step_index for d in result.decisions if d.outcome == "sent"] == list(range(10))
    assert len(await outbox(api, section)) == 10
    runs = [w async for w in env.client.list_workflows(f"WorkflowId = '{wid}'")]
    lengths = [(await env.client.get_workflow_handle(wid, run_id=r.run_id).describe()).history_length for r in runs]
    assert len(runs) >= 2, lengths  # it did continue as new
    assert max(lengths) < 600, lengths  # suggestContinueAsNew=200 in tests (production: 4k of 51k)
    # Twice the continue-as-new suggestion: one run would have held it all. (Was 600 when each
    # store step was a durable activity; local activities made every step ~7 events shorter.)
    assert sum(lengths) > 400, lengths
    assert elapsed < 60, elapsed
    print('history lengths per run:', lengths)
    statuses = {r.status for r in runs}
    assert statuses <= {WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.CONTINUED_AS_NEW}
