"""Provider fault matrix: every failure a vendor can produce is retried or failed as specified.

Retryable (5xx, 429 honouring Retry-After, timeouts, connection reset): retried with backoff and
delivered once. Permanent (400/401/403/404/422, 3xx): one call, recorded as failed, cap slot
given back, redirect never followed. Requests are counted so a retry storm fails the test.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from api.journeys import start_or_retrigger, trigger_input
from api.main import create_app
from settings import Settings
from store.engine import Store
from store.tables import Campaign, CapReservation, Send
from tests.helpers import (
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    make_section,
    reachable_user,
)
from tests.provider_server import ProviderServer, Reply
from worker import build_worker
from workflows.ids import journey_workflow_id
from workflows.models import JourneyResult, TriggerSignal

# Activity attempts time out after 2 s here, so a provider that never answers costs 2 s.
FAULT_TIMEOUT = timedelta(seconds=2)


@pytest.fixture(scope="module")
async def fault_api(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """API + in-process worker on their own queue, with a short delivery attempt timeout."""
    fs = settings.model_copy(
        update={"task_queue": "rejoin-faults-" + secrets.token_hex(4), "delivery_timeout": FAULT_TIMEOUT}
    )
    app = create_app(fs, store=store, temporal=env.client)
    async with build_worker(env.client, fs, store) as w, w:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test", timeout=60) as client:
            yield client


async def _run(api: httpx.AsyncClient, env: WorkflowEnvironment, provider: ProviderServer, *replies: Reply,
               timeout: float = 60) -> tuple[JourneyResult, list[float]]:  # fmt: skip
    """One single-step journey against scripted replies; its result and the request arrival times."""
    path = "/fault/" + secrets.token_hex(4)
    provider.script(path, *replies)
    arrivals: list[float] = []
    provider.on_request = lambda r: arrivals.append(time.monotonic()) if r.path == path else None
    sec = await make_section(api)
    await add_integration(api, sec, kind="custom_http", config={"url": provider.url(path)})
    cid = await create_campaign(api, sec, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-1"))
    try:
        result = await journey_result(env.client, sec, cid, uid, timeout=timeout)
    finally:
        provider.on_request = None
    assert len(provider.to(path)) == len(arrivals)
    return result, arrivals


def _send(store: Store, journey_id: str) -> Send:
    with store.session() as s:
        row = s.exec(select(Send).where(Send.journey_id == journey_id)).one()
        return row


def _slot_released(store: Store, send_key: str) -> bool:
    with store.session() as s:
        row = s.get(CapReservation, send_key)
        assert row is not None
        return row.released


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_server_errors_are_retried_then_delivered_once(
    fault_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer, status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """5xx/408 is retried with backoff; the message goes out once and is not flagged (the answer was known).
    Each retried attempt is one log line naming the send and the answer, not the SDK's traceback."""
    with caplog.at_level(logging.INFO):
        result, arrivals = await _run(fault_api, env, fresh_provider, Reply(status, "busy"), Reply(status), Reply(200))
    assert result.sent == 1 and len(arrivals) == 3
    assert len(fresh_provider.deliveries) == 1
    send = _send(store, result.journey_id)
    assert (send.status, send.attempts, send.possible_duplicate) == ("accepted", 3, False)
    retries = [r.getMessage() for r in caplog.records if r.name == "activities.provider_retry"]
    assert retries == [f"{send.key}: provider failed ({status}); Temporal retries it"] * 2, retries
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_honours_retry_after(
    fault_api: httpx.AsyncClient, env: WorkflowEnvironment, fresh_provider: ProviderServer, form: str
) -> None:
    """429 asks Temporal for a retry after Retry-After (seconds or HTTP-date); the one retry delivers."""
    when = "30" if form == "seconds" else format_datetime(datetime.now(UTC) + timedelta(seconds=31), usegmt=True)
    seen: list[float] = []

    async def watch() -> None:
        # While attempt 2 is at the (slow) provider, the pending activity carries attempt 1's failure.
        while not seen:
            for wf in [w async for w in env.client.list_workflows(f"TaskQueue = '{_queue(fault_api)}'")]:
                desc = await env.client.get_workflow_handle(wf.id, run_id=wf.run_id).describe()
                for act in desc.raw_description.pending_activities:
                    info = act.last_failure.application_failure_info
                    if act.attempt == 2 and info.HasField("next_retry_delay"):
                        seen.append(info.next_retry_delay.ToTimedelta().total_seconds())
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        result, arrivals = await _run(
            fault_api, env, fresh_provider, Reply(429, headers={"Retry-After": when}), Reply(200, delay=1.2)
        )
    finally:
        watcher.cancel()
    assert result.sent == 1 and len(arrivals) == 2
    assert seen and 28 <= seen[0] <= 31, seen


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_permanent_rejections_fail_once_and_free_the_slot(
    fault_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer, status: int
) -> None:
    """A 4xx rejection is never retried: one call, the step recorded failed with the status, cap slot released."""
    result, arrivals = await _run(fault_api, env, fresh_provider, Reply(status, {"error": "no"}))
    assert len(arrivals) == 1
    assert result.sent == 0
    failed = [d for d in result.decisions if d.outcome == "failed"]
    assert len(failed) == 1 and str(status) in (failed[0].reason or ""), result.decisions
    send = _send(store, result.journey_id)
    assert (send.status, send.provider_status) == ("failed", status)
    assert _slot_released(store, send.key)


async def test_redirect_is_a_permanent_failure_and_not_followed(
    fault_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer
) -> None:
    """A 3xx is not followed (it could point inside the network): one call, step failed."""
    fresh_provider.default("/internal", Reply(200))
    result, arrivals = await _run(
        fault_api, env, fresh_provider, Reply(302, headers={"Location": fresh_provider.url("/internal")})
    )
    assert len(arrivals) == 1 and fresh_provider.to("/internal") == []
    assert result.sent == 0
    assert _send(store, result.journey_id).status == "failed"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Reply(200, {"id": "slow"}, delay=4.0), id="timeout-after-accepting"),
        pytest.param(Reply(200, {"id": "x"}, truncate=True), id="reset-mid-body"),
        pytest.param(Reply(drop=True), id="closed-without-answer"),
    ],
)
async def test_unknown_outcomes_retry_once_and_flag(
    fault_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer, fault: Reply,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Timeout or reset after sending: retried with the same key, delivered once, flagged as possible duplicate.
    The attempt itself notices (its read timeout is inside the attempt's budget) and logs one line;
    Temporal never has to cancel it mid-call."""
    with caplog.at_level(logging.INFO):
        result, arrivals = await _run(fault_api, env, fresh_provider, fault, Reply(200))
    retries = [r.getMessage() for r in caplog.records if r.name == "activities.provider_retry"]
    assert len(retries) == 1 and ("(timeout)" in retries[0] or "(connection error)" in retries[0]), retries
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info] == []
    assert result.sent == 1 and len(arrivals) == 2
    keys = {r.headers["idempotency-key"] for r in fresh_provider.requests}
    assert len(keys) == 1
    assert len(fresh_provider.deliveries) == 1  # the provider de-duplicated the repeat
    send = _send(store, result.journey_id)
    assert (send.status, send.possible_duplicate) == ("accepted", True)


async def test_provider_down_for_good_gives_up_within_budget_without_storm(
    fault_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer
) -> None:
    """A provider that answers 503 forever: a few backed-off calls, then the step fails and the slot is freed."""
    path = "/fault/down"
    fresh_provider.default(path, Reply(503, "down"))
    sec = await make_section(fault_api)
    await add_integration(fault_api, sec, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(fault_api, sec, cart_campaign(wait="PT1H"))
    _, uid = await reachable_user(fault_api, sec)
    with store.session() as s:
        version = s.get(Campaign, cid).version  # type: ignore[union-attr]
    # A 5-minute delivery budget (default 6 h): backoff 2, 4, 8 ... s fits about 8 attempts.
    inp = trigger_input(sec.id, cid, version, uid, timedelta(hours=1), False, FAULT_TIMEOUT)
    inp.delivery_budget = timedelta(minutes=5)
    await start_or_retrigger(env.client, _queue(fault_api), journey_workflow_id(sec.id, cid, uid), inp,
                             TriggerSignal(event_id="evt_down"))  # fmt: skip
    result = await journey_result(env.client, sec, cid, uid, timeout=60)
    calls = len(fresh_provider.to(path))
    assert result.sent == 0 and result.status == "completed"
    assert result.decisions[0].outcome == "failed" and "gave up" in (result.decisions[0].reason or "")
    assert 3 <= calls <= 10, calls  # backed off, bounded: never a retry storm, never parked
    send = _send(store, result.journey_id)
    assert send.status == "failed" and _slot_released(store, send.key)


def _queue(api: httpx.AsyncClient) -> str:
    app = api._transport.app  # type: ignore[attr-defined]
    return str(app.state.rejoin.settings.task_queue)
