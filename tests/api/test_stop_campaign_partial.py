"""A campaign-wide stop goes through every journey when Temporal fails on some of them.

Before, a Temporal error on one journey part-way through the list answered 500: the journeys
after it were not stopped, and the caller could not tell which had been. Now each journey's
error is caught: the others are stopped, and the answer (503) counts them and names the failed
journeys with the error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowExecutionDescription, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

import api.routes.journey_stops as journeys_routes
from api.journeys import latest_run as real_latest_run
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    outbox,
    reachable_user,
)


async def _journey(api: httpx.AsyncClient, section: SectionKeys, dyid: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
    [journey] = r.json()
    return dict(journey)


async def test_a_temporal_error_on_one_journey_stops_the_others_and_names_it(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    users = [await reachable_user(api, section) for _ in range(3)]
    with env.with_time_skipping_disabled():
        for dyid, _ in users:
            await collect(api, section, dyid, add_to_cart("sku-1"))
        failing = await _journey(api, section, users[1][0])

        async def latest_run(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription | None:
            if handle.id == failing["workflow_id"]:
                raise RPCError("history service unavailable", RPCStatusCode.UNAVAILABLE, b"")
            return await real_latest_run(handle)

        monkeypatch.setattr(journeys_routes, "latest_run", latest_run)

        r = await api.post(f"/api/v1/campaigns/{cid}/journeys/exit", headers=section.mgmt)

        assert r.status_code == 503, r.text
        body = r.json()
        assert {k: v for k, v in body.items() if k != "failures"} == {
            "campaign_id": cid, "signalled": 2, "ended_in_store": 0, "start_pending": 0, "already_ended": 0,
            "failed": 1}, body  # fmt: skip
        [failure] = body["failures"]
        assert failure["journey_id"] == failing["id"], failure
        # Temporal's status, not its message (it can name the server's internals: tests/api/test_temporal_errors.py)
        assert failure["reason"] == "Temporal UNAVAILABLE", failure
        for i in (0, 2):
            result = await journey_result(env.client, section, cid, users[i][1])
            assert (result.status, result.exit_reason) == ("exited", "operator_stopped"), result
        assert (await _journey(api, section, users[1][0]))["status"] == "active"  # not stopped: still running

        monkeypatch.setattr(journeys_routes, "latest_run", real_latest_run)  # Temporal answers again
        again = await api.post(f"/api/v1/campaigns/{cid}/journeys/exit", headers=section.mgmt)

        assert again.status_code == 200, again.text
        assert (again.json()["signalled"], again.json()["failed"], again.json()["failures"]) == (1, 0, []), again.text
        result = await journey_result(env.client, section, cid, users[1][1])
        assert (result.status, result.exit_reason) == ("exited", "operator_stopped"), result
    assert await outbox(api, section) == []


async def test_a_single_journey_stop_still_fails_on_a_temporal_error(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-journey route keeps its behaviour: the error is the answer (nothing else to report),
    a busy Temporal's 503 (it was a 500: api/temporal_errors.py)."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, _ = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        journey = await _journey(api, section, dyid)

        async def latest_run(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription | None:
            raise RPCError("history service unavailable", RPCStatusCode.UNAVAILABLE, b"")

        monkeypatch.setattr(journeys_routes, "latest_run", latest_run)
        r = await api.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        monkeypatch.undo()
        r = await api.post(f"/api/v1/campaigns/{cid}/journeys/exit", headers=section.mgmt)  # leave nothing running
        assert r.status_code == 200 and r.json()["signalled"] == 1, r.text
