"""Operators stop journeys, testers preview a chosen variation.

Before, nothing stopped a journey in flight but an ingested exit event: terminating its workflow
in the Temporal UI left its row active, and pausing or archiving a campaign only skipped its
steps. `POST /api/v1/journeys/{id}/exit` and `POST /api/v1/campaigns/{id}/journeys/exit` send
the journey's exit signal (reason `operator_stopped`), or end the row of a workflow gone. A preview
ran the variation allocation gave the test user; `variation_id` now chooses it."""

from __future__ import annotations

from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Journey
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    make_section,
    outbox,
    reachable_user,
    step,
)
from workflows.models import ExitSignal


async def _journeys(api: httpx.AsyncClient, section: SectionKeys, dyid: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
    assert r.status_code == 200, r.text
    return list(r.json())


def _row(store: Store, journey_id: str) -> Journey:
    with store.session() as s:
        row = s.get(Journey, journey_id)
        assert row is not None
        return row


async def test_stopping_one_journey_exits_it_and_nothing_more_is_sent(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=[step("s1"), step("s2", "P1D")]))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        [journey] = await _journeys(api, section, dyid)

        r = await api.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)

        assert r.status_code == 200, r.text
        assert (r.json()["journey_id"], r.json()["outcome"]) == (journey["id"], "signalled"), r.text
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason, result.sent) == ("exited", "operator_stopped", 0), result
    row = _row(store, journey["id"])
    assert (row.status, row.exit_reason) == ("exited", "operator_stopped")
    assert await outbox(api, section) == []
    again = await api.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)
    assert again.status_code == 409 and again.json()["detail"][0]["loc"] == ["path", "journey_id"], again.text
    assert "ended already" in again.text


async def test_stopping_a_campaigns_journeys_exits_every_active_one_and_no_other(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    other = await create_campaign(api, section, cart_campaign(name="Other", wait="PT1H"))
    users = [await reachable_user(api, section) for _ in range(3)]
    with env.with_time_skipping_disabled():
        for dyid, _ in users:
            await collect(api, section, dyid, add_to_cart("sku-1"))  # a journey in each campaign

        r = await api.post(f"/api/v1/campaigns/{cid}/journeys/exit", headers=section.mgmt)

        assert r.status_code == 200, r.text
        assert r.json() == {"campaign_id": cid, "signalled": 3, "ended_in_store": 0, "start_pending": 0,
                            "already_ended": 0, "failed": 0, "failures": []}, r.text  # fmt: skip
        for _, uid in users:
            result = await journey_result(env.client, section, cid, uid)
            assert (result.status, result.exit_reason, result.sent) == ("exited", "operator_stopped", 0)
        statuses = {(j["campaign_id"], j["status"]) for dyid, _ in users for j in await _journeys(api, section, dyid)}
        assert statuses == {(cid, "exited"), (other, "active")}, statuses
        again = await api.post(f"/api/v1/campaigns/{cid}/journeys/exit", headers=section.mgmt)
        assert again.status_code == 200 and again.json()["signalled"] == 0, again.text
        await api.post(f"/api/v1/campaigns/{other}/journeys/exit", headers=section.mgmt)  # leave nothing running
    assert await outbox(api, section) == []


async def test_stopping_a_terminated_journey_ends_its_row(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Terminated in the Temporal UI, the journey's row stayed active: the stop ends it."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await journey_handle(env.client, section, cid, uid).terminate("operator")
    [journey] = await _journeys(api, section, dyid)
    assert journey["status"] == "active"

    r = await api.post(f"/api/v1/journeys/{journey['id']}/exit", headers=section.mgmt)

    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["outcome"], body["status"], body["exit_reason"]) == ("ended_in_store", "exited", "operator_stopped")
    row = _row(store, journey["id"])
    assert (row.status, row.exit_reason) == ("exited", "operator_stopped") and row.ended_at is not None


def _two_variations() -> dict[str, Any]:
    """Everyone is allocated A; B is reached only by a preview that asks for it."""
    return cart_campaign(wait="P1D", variations=[
        {"id": "a", "name": "A", "share": 100, "steps": [step("From A")]},
        {"id": "b", "name": "B", "share": 0, "steps": [step("From B"), step("From B again", "P2D")]}])  # fmt: skip


async def test_a_preview_runs_the_variation_it_asks_for(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, _two_variations())
    dyid, uid = await reachable_user(api, section)
    await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)

    r = await api.post(f"/api/v1/campaigns/{cid}/preview", json={"user": dyid, "variation_id": "b"},
                       headers=section.mgmt)  # fmt: skip

    assert r.status_code == 202, r.text
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.sent) == ("completed", 2), result
    assert [m["payload"]["step"] for m in await outbox(api, section)] == ["From B", "From B again"]
    [journey] = await _journeys(api, section, dyid)
    assert (journey["variation_id"], journey["is_test"], journey["status"]) == ("b", True, "completed"), journey


async def test_a_preview_of_a_variation_the_campaign_lacks_is_refused(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, _two_variations())
    dyid, _ = await reachable_user(api, section)
    await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)

    r = await api.post(f"/api/v1/campaigns/{cid}/preview", json={"user": dyid, "variation_id": "zz"},
                       headers=section.mgmt)  # fmt: skip

    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "variation_id"] and "'zz'" in r.text and "a, b" in r.text, r.text
    assert await _journeys(api, section, dyid) == []  # nothing recorded


async def test_stop_routes_need_the_sections_management_key(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, _ = await reachable_user(api, section)
    other = await make_section(api, "another shop")
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        [journey] = await _journeys(api, section, dyid)
        paths = [f"/api/v1/journeys/{journey['id']}/exit", f"/api/v1/campaigns/{cid}/journeys/exit"]
        for path in paths:
            assert (await api.post(path)).status_code == 401
            assert (await api.post(path, headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await api.post(path, headers={"Authorization": f"Bearer {section.ingestion}"})).status_code == 403
            assert (await api.post(path, headers=other.mgmt)).status_code == 404  # another section's
        for path in ["/api/v1/journeys/nope/exit", "/api/v1/campaigns/nope/journeys/exit"]:
            assert (await api.post(path, headers=section.mgmt)).status_code == 404
        assert (await _journeys(api, section, dyid))[0]["status"] == "active"  # untouched by the refusals
        r = await api.post(f"/api/v1/campaigns/{cid}/journeys/exit", headers=section.mgmt)
        assert r.json()["signalled"] == 1, r.text


async def test_an_exit_signal_with_a_reason_longer_than_its_column_ends_the_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """docs/operations.md's CLI exit signal takes free text: a reason over the 200 characters of the
    journey's and the decision's reason columns failed every `journey.finish` write on PostgreSQL, retried
    for ever, and the journey stayed running (no pending activity shown: a local activity). It is clipped."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=[step("s1"), step("s2", "P1D")]))
    dyid, uid = await reachable_user(api, section)
    long_reason = "stopped by ops: " + "x" * 300
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        [journey] = await _journeys(api, section, dyid)
        await journey_handle(env.client, section, cid, uid).signal(
            "exit", ExitSignal(event_id="op-long", reason=long_reason)
        )
    result = await journey_result(env.client, section, cid, uid, timeout=30)
    assert (result.status, result.sent) == ("exited", 0), result
    row = _row(store, journey["id"])
    assert row.status == "exited" and row.exit_reason is not None, row
    assert len(row.exit_reason) == 200 and row.exit_reason.startswith("stopped by ops: xxx"), row.exit_reason
