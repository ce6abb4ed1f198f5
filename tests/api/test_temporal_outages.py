"""How the API behaves while Temporal is down, busy or rate-limiting: it answers at once, says when
to come back, and its sweeper backs off.

- Temporal unreachable: a 503 with the same `Retry-After` as a busy Temporal's (before: none).
- The API's own Temporal client gives up after about a second of retries (runtime/temporal.py,
  REQUEST_RETRY): before, it retried for ~10 s (UNAVAILABLE), ~15 s (RESOURCE_EXHAUSTED) or ~6 s
  (INTERNAL) before the request got its 503/502. The worker's client keeps the SDK's patient default.
- RESOURCE_EXHAUSTED (a rate-limited namespace) stops a sweep round after one call, as UNAVAILABLE
  does (before: one call per pending event); the events stay pending and go once Temporal answers.

Real parts: a gRPC server on loopback answering the status under test (tests/temporal_fault_server.py),
the real Temporal test server, the session's database.
"""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api.deps import AppState
from api.ingestion import redispatch_pending
from api.temporal_errors import RETRY_AFTER_SECONDS
from runtime.temporal import connect_temporal
from settings import Settings
from store.engine import Store
from store.tables import Event
from tests.api.temporal_outage import api_connecting_to, url_feed
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    create_campaign,
    journey_result,
    reachable_user,
)
from tests.temporal_fault_server import temporal_fault_server

# Generous: the API's client gives up after ~1 s (a CI machine under load took 3.7 s); the SDK's
# default took 6 to 15 s.
FAIL_FAST_SECONDS = 5.0


async def test_temporal_unreachable_is_a_503_with_retry_after(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store
) -> None:
    feed = await url_feed(api, section)
    async with api_connecting_to(settings, store, "127.0.0.1:1") as offline:
        r = await offline.post(f"/api/v1/feeds/{feed}/sync", headers=section.mgmt)
    assert r.status_code == 503 and "not reachable" in r.json()["error"], r.text
    assert r.headers.get("retry-after") == str(RETRY_AFTER_SECONDS), r.headers


@pytest.mark.parametrize(
    ("status", "expected"),
    [(RPCStatusCode.UNAVAILABLE, 503), (RPCStatusCode.RESOURCE_EXHAUSTED, 503), (RPCStatusCode.INTERNAL, 502)],
    ids=["UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL"],
)
async def test_a_request_waits_on_temporal_retries_for_seconds_at_most(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store, status: RPCStatusCode,
    expected: int,
) -> None:  # fmt: skip
    feed = await url_feed(api, section)
    async with temporal_fault_server(status) as server:
        async with api_connecting_to(settings, store, f"127.0.0.1:{server.port}") as faulty:
            started = time.monotonic()
            r = await faulty.post(f"/api/v1/feeds/{feed}/sync", headers=section.mgmt)
            took = time.monotonic() - started
    assert r.status_code == expected and status.name in r.json()["error"], r.text
    assert "StartWorkflowExecution" in server.calls, server.calls
    assert took < FAIL_FAST_SECONDS, f"the request waited {took:.1f} s on Temporal's retries"
    if status == RPCStatusCode.UNAVAILABLE:
        assert len(server.calls) > 1, "a blip of a few hundred milliseconds is still ridden out"


async def test_the_workers_client_keeps_the_sdks_patient_retries(settings: Settings) -> None:
    async with temporal_fault_server() as server:
        client = await connect_temporal(settings.model_copy(update={"temporal_address": f"127.0.0.1:{server.port}"}))
        assert client.service_client.config.retry_config is None  # the SDK's default: up to 10 s


async def test_a_rate_limited_temporal_stops_the_sweep_round_and_keeps_the_events(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """Before: RESOURCE_EXHAUSTED failed one event at a time, and the round went on calling Temporal
    for every other pending event (a call each) while it asked its callers to back off."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    users = [await reachable_user(api, section) for _ in range(3)]
    pending: list[str] = []
    async with api_connecting_to(settings, store, "127.0.0.1:1") as offline:
        for dyid, _ in users:
            body = {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": [add_to_cart("sku-1")]}
            r = await offline.post("/v2/collect/user/event", json=body, headers=section.ing)
            assert r.status_code == 202 and r.json()["warnings"][0]["code"] == "DISPATCH_DEFERRED", r.text
            pending += r.json()["event_ids"]

    def dispatched() -> list[bool]:
        with store.session() as s:
            return [bool(ev.dispatched) for ev in (s.get(Event, i) for i in pending) if ev is not None]

    async with temporal_fault_server(RPCStatusCode.RESOURCE_EXHAUSTED) as server:
        busy = AppState(settings=settings, store=store, temporal=await server.client())  # no retries of its own
        with pytest.raises(RPCError) as raised:
            await redispatch_pending(busy, older_than=timedelta(0))
    assert raised.value.status == RPCStatusCode.RESOURCE_EXHAUSTED
    assert len(server.calls) == 1, f"one call, then the round stops: {server.calls}"
    assert dispatched() == [False, False, False]

    await redispatch_pending(AppState(settings=settings, store=store, temporal=env.client), older_than=timedelta(0))
    assert dispatched() == [True, True, True]
    for _, uid in users:
        assert (await journey_result(env.client, section, cid, uid)).sent == 1
