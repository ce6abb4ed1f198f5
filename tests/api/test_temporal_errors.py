"""Temporal's own errors answer in one way on every route that calls Temporal.

Before, a call Temporal answered with an error once connected (an `RPCError`) escaped as a 500
(a campaign's schedule was a 503 for every status, quoting Temporal's own message). Now a busy
Temporal (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED) is a 503 with `Retry-After`,
any other error a 502, both naming Temporal's status and the operation, never the server's message;
reading journeys answers from the store with `live_error`; ingestion stores and defers.

The errors are real: a gRPC server on loopback (tests/temporal_fault_server.py) answering every
WorkflowService call with the status under test, or the real Temporal test server asked for a
namespace that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from settings import Settings
from store.engine import Store
from store.tables import Event
from tests.audience.feed_helpers import batch_campaign
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    reachable_user,
)
from tests.temporal_fault_server import TemporalFaultServer, temporal_fault_server

# (what Temporal answers, what the API answers)
ANSWERS = [
    (RPCStatusCode.UNAVAILABLE, 503),
    (RPCStatusCode.RESOURCE_EXHAUSTED, 503),
    (RPCStatusCode.DEADLINE_EXCEEDED, 503),
    (RPCStatusCode.INTERNAL, 502),
]
IDS = [status.name for status, _ in ANSWERS]


@asynccontextmanager
async def _api_over(settings: Settings, store: Store, temporal: Client | None) -> AsyncIterator[httpx.AsyncClient]:
    """The API over the session's store with its own Temporal client; a 500 is answered, not raised."""
    app = create_app(settings, store=store, temporal=temporal)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://faulty.test", timeout=60) as client:
        yield client


@asynccontextmanager
async def _faulty_api(
    settings: Settings, store: Store, status: RPCStatusCode
) -> AsyncIterator[tuple[httpx.AsyncClient, TemporalFaultServer]]:
    async with temporal_fault_server(status) as server, _api_over(settings, store, await server.client()) as api:
        yield api, server


def _assert_temporal_answer(r: httpx.Response, expected: int, status: RPCStatusCode, operation: str) -> None:
    assert r.status_code == expected, r.text
    body = r.json()
    assert body["detail"][0]["type"] == "temporal_error", body
    assert "Temporal" in body["error"] and status.name in body["error"] and operation in body["error"], body
    assert "10.0.3.7" not in r.text and "shard" not in r.text, "Temporal's own message stays in the log"
    if expected == 503:
        assert r.headers.get("retry-after") == "5", r.headers
    else:
        assert "retry-after" not in r.headers, r.headers


def _recurring_campaign() -> dict[str, Any]:
    return batch_campaign("scheduled", channels=("app_push",), schedule={"recurring": True, "days": ["mon"]})


async def _active_journey(api: httpx.AsyncClient, section: SectionKeys) -> tuple[str, dict[str, Any]]:
    """A user with a running journey waiting an hour for its first step: (dyid, the journey)."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, _ = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
    [journey] = r.json()
    assert journey["status"] == "active" and journey["live"] is not None, journey
    return dyid, dict(journey)


@pytest.mark.parametrize(("status", "expected"), ANSWERS, ids=IDS)
async def test_creating_a_scheduled_campaign(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store, status: RPCStatusCode,
    expected: int,
) -> None:  # fmt: skip
    async with _faulty_api(settings, store, status) as (faulty, server):
        r = await faulty.post("/api/v1/campaigns", json=_recurring_campaign(), headers=section.mgmt)
    _assert_temporal_answer(r, expected, status, "the campaign's Temporal Schedule")
    assert "the campaign was saved" in r.json()["error"]
    assert "CreateSchedule" in server.calls, server.calls


@pytest.mark.parametrize(("status", "expected"), ANSWERS, ids=IDS)
async def test_creating_a_feed_with_a_sync_schedule(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store, status: RPCStatusCode,
    expected: int,
) -> None:  # fmt: skip
    body = {"kind": "product", "name": "F", "source": "url", "url": "http://127.0.0.1:9/f.csv", "sync_every": "PT1H"}
    async with _faulty_api(settings, store, status) as (faulty, server):
        r = await faulty.post("/api/v1/feeds", json=body, headers=section.mgmt)
    _assert_temporal_answer(r, expected, status, "create the feed's sync schedule")
    assert "was saved without it" in r.json()["error"] and server.calls == ["CreateSchedule"], server.calls


@pytest.mark.parametrize(("status", "expected"), ANSWERS, ids=IDS)
async def test_syncing_a_feed(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store, status: RPCStatusCode,
    expected: int,
) -> None:  # fmt: skip
    body = {"kind": "product", "name": "F", "source": "url", "url": "http://127.0.0.1:9/f.csv"}
    r = await api.post("/api/v1/feeds", json=body, headers=section.mgmt)
    assert r.status_code == 201, r.text
    async with _faulty_api(settings, store, status) as (faulty, server):
        r = await faulty.post(f"/api/v1/feeds/{r.json()['id']}/sync", headers=section.mgmt)
    _assert_temporal_answer(r, expected, status, "start the feed's sync")
    assert "StartWorkflowExecution" in server.calls, server.calls


@pytest.mark.parametrize(("status", "expected"), ANSWERS, ids=IDS)
async def test_starting_a_batched_run(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store, status: RPCStatusCode,
    expected: int,
) -> None:  # fmt: skip
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()  # the schedule does not fire during the test
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": later})
    cid = await create_campaign(api, section, spec)
    async with _faulty_api(settings, store, status) as (faulty, server):
        r = await faulty.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    _assert_temporal_answer(r, expected, status, "start the run")
    assert "repeat the request" in r.json()["error"] and "StartWorkflowExecution" in server.calls, server.calls


@pytest.mark.parametrize(("status", "expected"), ANSWERS, ids=IDS)
async def test_stopping_and_erasing_while_temporal_errs_change_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    status: RPCStatusCode, expected: int,
) -> None:  # fmt: skip
    with env.with_time_skipping_disabled():
        dyid, journey = await _active_journey(api, section)
        async with _faulty_api(settings, store, status) as (faulty, server):
            stop = await faulty.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)
            erase = await faulty.delete(f"/api/v1/users/{dyid}", headers=section.mgmt)
        _assert_temporal_answer(stop, expected, status, "stop the journey")
        _assert_temporal_answer(erase, expected, status, "signal the person's journeys to exit")
        assert "nothing was erased" in erase.json()["error"]
        assert "DescribeWorkflowExecution" in server.calls and "SignalWorkflowExecution" in server.calls, server.calls
        assert (await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)).status_code == 200  # not erased
        r = await api.get(f"/api/v1/journeys/{journey['id']}", headers=section.mgmt)
        assert r.json()["status"] == "active", r.text
        r = await api.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)  # Temporal answers again
        assert r.status_code == 200 and r.json()["outcome"] == "signalled", r.text


@pytest.mark.parametrize(("status", "expected"), ANSWERS, ids=IDS)
async def test_reading_journeys_answers_from_the_store_with_live_error(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    status: RPCStatusCode, expected: int,
) -> None:  # fmt: skip
    with env.with_time_skipping_disabled():
        dyid, journey = await _active_journey(api, section)
        async with _faulty_api(settings, store, status) as (faulty, server):
            one = await faulty.get(f"/api/v1/journeys/{journey['id']}", headers=section.mgmt)
            listed = await faulty.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
        assert one.status_code == 200 and listed.status_code == 200, (one.text, listed.text)
        for view in (one.json(), listed.json()[0]):
            assert view["id"] == journey["id"] and view["status"] == "active", view
            assert view["live"] is None and view["live_error"] == f"Temporal {status.name}: live state not read", view
            assert "10.0.3.7" not in str(view)
        assert "DescribeWorkflowExecution" in server.calls, server.calls
        await api.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)


async def test_reading_journeys_while_temporal_is_unreachable(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """Before: 503 for the whole answer. The live state is the one part Temporal gives."""
    with env.with_time_skipping_disabled():
        _, journey = await _active_journey(api, section)
        down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
        async with _api_over(down, store, None) as offline:
            r = await offline.get(f"/api/v1/journeys/{journey['id']}", headers=section.mgmt)
        assert r.status_code == 200, r.text
        assert r.json()["live"] is None and "not reachable" in r.json()["live_error"], r.text
        await api.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)


@pytest.mark.parametrize(("status", "expected"), ANSWERS, ids=IDS)
async def test_ingestion_stores_and_defers_whatever_temporal_answers(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store, status: RPCStatusCode,
    expected: int,
) -> None:  # fmt: skip
    """Unchanged (a guard): the events are stored, the sweeper dispatches them; never a 5xx."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, _ = await reachable_user(api, section)
    body = {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": [add_to_cart("sku-1")]}
    async with _faulty_api(settings, store, status) as (faulty, server):
        r = await faulty.post("/v2/collect/user/event", json=body, headers=section.ing)
    assert r.status_code == 202 and r.json()["warnings"][0]["code"] == "DISPATCH_DEFERRED", r.text
    assert "SignalWithStartWorkflowExecution" in server.calls, server.calls
    with store.session() as s:
        event = s.get(Event, r.json()["event_ids"][0])
        assert event is not None and not event.dispatched


async def test_a_namespace_that_does_not_exist_is_a_502_not_a_missing_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """The real Temporal server, asked for a namespace it does not have, answers NOT_FOUND to every
    call. Before: the stop took it for "the workflow never ran" (409 `start has not reached Temporal`,
    or the row ended while the journey ran on), the feed's schedule a 500."""
    wrong = await Client.connect(
        env.client.service_client.config.target_host, namespace="no-such-namespace",
        data_converter=pydantic_data_converter,
    )  # fmt: skip
    with env.with_time_skipping_disabled():
        _, journey = await _active_journey(api, section)
        body = {"kind": "product", "name": "F", "source": "url", "url": "http://127.0.0.1:9/f.csv",
                "sync_every": "PT1H"}  # fmt: skip
        async with _api_over(settings, store, wrong) as misconfigured:
            stop = await misconfigured.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)
            feed = await misconfigured.post("/api/v1/feeds", json=body, headers=section.mgmt)
            view = await misconfigured.get(f"/api/v1/journeys/{journey['id']}", headers=section.mgmt)
        _assert_temporal_answer(stop, 502, RPCStatusCode.NOT_FOUND, "stop the journey")
        _assert_temporal_answer(feed, 502, RPCStatusCode.NOT_FOUND, "create the feed's sync schedule")
        assert "no-such-namespace" not in stop.text + feed.text
        assert view.status_code == 200 and view.json()["live_error"] == "Temporal NOT_FOUND: live state not read"
        r = await api.get(f"/api/v1/journeys/{journey['id']}", headers=section.mgmt)
        assert r.json()["status"] == "active" and r.json()["live"] is not None, r.text
        await api.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)
