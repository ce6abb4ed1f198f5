"""A worker SIGKILLed around the provider call: the journey completes, nothing is sent twice."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Send
from tests import worker_proc
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
    make_section,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Received, Reply
from workflows.journey import JourneyWorkflow


def _sends(store: Store, journey_id: str) -> list[Send]:
    with store.session() as s:
        return list(s.exec(select(Send).where(Send.journey_id == journey_id).order_by(Send.step_index)).all())


async def _journey(proc_api: httpx.AsyncClient, provider: ProviderServer, path: str) -> tuple[SectionKeys, str, str, str]:
    sec = await make_section(proc_api)
    await add_integration(proc_api, sec, kind="custom_http", config={"url": provider.url(path)})
    steps = [step("First"), step("Second", "P1D")]
    cid = await create_campaign(proc_api, sec, cart_campaign(wait="PT1H", steps=steps))
    dyid, uid = await reachable_user(proc_api, sec)
    return sec, cid, dyid, uid


@pytest.mark.slow  # ~17 s each: worker start, sticky-queue and activity timeouts in real time
@pytest.mark.parametrize(
    "first_reply",
    [
        pytest.param(Reply(drop=True), id="dies-before-provider-processed"),
        pytest.param(Reply(200, {"id": "m1"}, delay=2.0), id="dies-after-provider-accepted"),
    ],
)
async def test_worker_sigkill_around_provider_call_delivers_once_and_flags(
    proc_api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    store: Store,
    fresh_provider: ProviderServer,
    spawn_worker: Callable[[], subprocess.Popen[str]],
    first_reply: Reply,
) -> None:
    """SIGKILL while the first send is at the provider: after restart every step is delivered once, the repeat flagged."""
    path = "/crash"
    fresh_provider.script(path, first_reply)
    sec, cid, dyid, uid = await _journey(proc_api, fresh_provider, path)
    worker = spawn_worker()
    killed = threading.Event()

    def kill_on_first(req: Received) -> None:
        if req.path == path and not killed.is_set():
            worker_proc.kill(worker)
            killed.set()

    fresh_provider.on_request = kill_on_first
    try:
        await collect(proc_api, sec, dyid, add_to_cart("sku-1"))
        assert await _wait(killed), "the worker never reached the provider"
        assert worker.poll() is not None
        spawn_worker()  # a fresh worker picks the journey up
        result = await journey_result(env.client, sec, cid, uid, timeout=90)
    finally:
        fresh_provider.on_request = None
    assert result.status == "completed", result
    assert [d.step_index for d in result.decisions if d.outcome == "sent"] == [0, 1]
    # The provider de-duplicates on Idempotency-Key: two calls for step 0, one delivery per step.
    keys = [r.headers["idempotency-key"] for r in fresh_provider.to(path)]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2], keys
    assert len(fresh_provider.deliveries) == 2
    sends = _sends(store, result.journey_id)
    assert [(s.status, s.attempts, s.possible_duplicate) for s in sends] == [
        ("accepted", 2, True),  # outcome of attempt 1 unknown to us: flagged, never silent
        ("accepted", 1, False),
    ]
    assert [d.possible_duplicate for d in result.decisions if d.outcome == "sent"] == [True, False]


async def _wait(flag: threading.Event, timeout: float = 30.0) -> bool:
    import asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, flag.wait, timeout)


@pytest.mark.slow  # ~14 s: two worker start-ups and a sticky-queue timeout
async def test_worker_sigkill_during_wait_before_any_send_resumes_on_a_new_worker(
    proc_api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    store: Store,
    fresh_provider: ProviderServer,
    spawn_worker: Callable[[], subprocess.Popen[str]],
) -> None:
    """SIGKILL while the journey waits (no send started): a new worker resumes it, each step delivered once, none flagged."""
    path = "/crash-wait"
    sec, cid, dyid, uid = await _journey(proc_api, fresh_provider, path)
    worker = spawn_worker()
    with env.with_time_skipping_disabled():
        await collect(proc_api, sec, dyid, add_to_cart("sku-1"))
    handle = journey_handle(env.client, sec, cid, uid)

    async def waiting() -> None:
        assert (await handle.query(JourneyWorkflow.current_state)).status == "waiting"

    await eventually(waiting)
    worker_proc.kill(worker)
    spawn_worker()
    await env.fast_forward(handle)
    result = await journey_result(env.client, sec, cid, uid, timeout=90)
    assert result.status == "completed", result
    assert len(fresh_provider.to(path)) == 2 and len(fresh_provider.deliveries) == 2
    assert [(s.status, s.attempts, s.possible_duplicate) for s in _sends(store, result.journey_id)] == [
        ("accepted", 1, False),
        ("accepted", 1, False),
    ]
