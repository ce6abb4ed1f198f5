"""Operators and testers: journey look-up, decision trace, search attributes, previews, versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    eventually,
    journey_handle,
    journey_result,
    login,
    new_dyid,
    outbox,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply


async def test_user_journeys_show_live_state_trace_and_ui_link(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A waiting journey shows its next wake time; the UI link names the workflow."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT3H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))

        async def waiting() -> list[dict[str, object]]:
            r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
            body = r.json()
            assert body and body[0]["live"] and body[0]["live"]["status"] == "waiting", body
            return list(body)

        [journey] = await eventually(waiting)
        assert journey["campaign_id"] == cid and "journey%2F" in str(journey["temporal_ui"])
        live = journey["live"]
        assert isinstance(live, dict) and live["next_wake_at"] and live["total_steps"] == 1
        await env.fast_forward(journey_handle(env.client, section, cid, uid))
    await journey_result(env.client, section, cid, uid)
    r = await api.get(f"/api/v1/journeys/{journey['id']}", headers=section.mgmt)
    outcomes = [(d["outcome"], d["channel"]) for d in r.json()["decisions"]]
    assert outcomes == [("decided", "email"), ("sent", "email")], outcomes


async def test_a_send_being_retried_shows_its_attempts_and_the_last_answer(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """While the provider answers 503 the journey's send shows `retrying`, its attempts and the
    provider's last answer (not only the journey's "sending"); once accepted, the same send shows it."""
    path = "/flaky"
    fresh_provider.default(path, Reply(503, "maintenance until 10:00"))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))

    async def retrying() -> dict[str, Any]:
        journeys = (await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)).json()
        assert len(journeys) == 1 and len(journeys[0]["sends"]) == 1, journeys
        send = journeys[0]["sends"][0]
        assert send["status"] == "retrying" and send["attempts"] >= 2, send
        return dict(send)

    send = await eventually(retrying)
    assert send["provider_status"] == 503 and "maintenance until 10:00" in send["provider_response"], send
    assert (send["step_index"], send["channel"]) == (0, "email")
    fresh_provider.default(path, Reply(200, {"id": "m-1"}))
    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    [journey] = (await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)).json()
    [done] = journey["sends"]
    assert done["status"] == "accepted" and done["attempts"] == len(fresh_provider.to(path)), done
    assert done["provider_status"] == 200


async def test_a_send_told_to_wait_shows_when_its_next_attempt_runs(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """A 429 with `Retry-After: 600` puts the send in Temporal's retry backoff, where the workflow
    has no wake time of its own (`live.next_wake_at` is null while it sends): the journey shows when
    the next attempt runs, about ten minutes ahead, as Temporal scheduled it."""
    path = "/throttled"
    fresh_provider.default(path, Reply(429, "slow down", headers={"Retry-After": "600"}))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    flagged = await api.put(f"/api/v1/users/{dyid}/test", headers=section.mgmt, json={"is_test": True})
    assert flagged.status_code == 200, flagged.text  # a test user's wait passes at once, on its own clock
    with env.with_time_skipping_disabled():
        asked = datetime.now(UTC)
        await collect(api, section, dyid, add_to_cart("sku-1"))

        async def backing_off() -> dict[str, Any]:
            [journey] = (await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)).json()
            assert journey["next_attempt_at"] is not None, journey
            return dict(journey)

        journey = await eventually(backing_off)
    ahead = datetime.fromisoformat(journey["next_attempt_at"]) - asked
    assert timedelta(minutes=9) < ahead < timedelta(minutes=11), journey["next_attempt_at"]
    assert journey["live"]["status"] == "sending" and journey["live"]["next_wake_at"] is None, journey["live"]
    assert [s["status"] for s in journey["sends"]] == ["retrying"] and len(fresh_provider.to(path)) == 1
    # Not left to retry: a later test's time skipping would run its next attempt into that test's provider.
    await journey_handle(env.client, section, cid, uid).terminate("test over")


async def test_decision_trace_explains_why_nothing_was_sent(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """"Why did this user get nothing?" — the trace says not opted in."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid = new_dyid()
    await collect(api, section, dyid, login(email_for(dyid)), add_to_cart("sku-1"))
    uid = (await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)).json()["id"]
    await journey_result(env.client, section, cid, uid)
    [j] = (await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)).json()
    assert [(d["outcome"], d["reason"]) for d in j["decisions"]] == [("skipped", "not_opted_in")]


async def test_search_attributes_find_a_users_journeys(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Operators find journeys by user and campaign in Temporal's visibility."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await journey_result(env.client, section, cid, uid)

    async def listed() -> None:
        found = [w async for w in env.client.list_workflows(f'RejoinUserId = "{uid}" AND RejoinCampaignId = "{cid}"')]
        assert len(found) == 1
        assert found[0].typed_search_attributes is not None

    await eventually(listed)


async def test_in_flight_journeys_keep_their_campaign_version(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Editing a campaign mid-journey does not change the journey already running."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(steps=[step("Old name")]))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        r = await api.put(f"/api/v1/campaigns/{cid}", json=cart_campaign(steps=[step("New name")]), headers=section.mgmt)
        assert r.json()["version"] == 2
        await env.fast_forward(journey_handle(env.client, section, cid, uid))
    await journey_result(env.client, section, cid, uid)
    assert [m["payload"]["step"] for m in await outbox(api, section)] == ["Old name"]


async def test_preview_runs_a_long_journey_for_a_test_user(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A flagged test user previews a 3-step, 60-day journey; non-test users are refused."""
    await add_integration(api, section)
    steps = [step("s1"), step("s2", "P30D"), step("s3", "P29D")]
    cid = await create_campaign(api, section, cart_campaign(wait="P1D", steps=steps))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, {"name": "Sync", "properties": {"dyType": "sync-cart-v1", "value": 1,
                                                                         "cart": [{"productId": "p", "quantity": 1}]}}, consent=False)  # fmt: skip
    refused = await api.post(f"/api/v1/campaigns/{cid}/preview", json={"user": dyid}, headers=section.mgmt)
    assert refused.status_code == 422 and "test user" in refused.text
    flagged = await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)
    assert flagged.json()["is_test"] is True
    r = await api.post(f"/api/v1/campaigns/{cid}/preview", json={"user": dyid}, headers=section.mgmt)
    assert r.status_code == 202, r.text
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 3
    span = result.decisions[-1].at - result.decisions[0].at
    assert span >= timedelta(days=59)
    assert [m["payload"]["items"][0]["sku"] for m in await outbox(api, section)] == ["p", "p", "p"]


async def test_preview_refuses_a_user_whose_real_time_journey_still_runs(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Flagged as a test user while a journey of theirs runs on real time: the preview would only
    re-trigger that journey (it answered 202 and nothing ran on a skipped clock); a 409 says why."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="P1D"))
    dyid, _ = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)
    r = await api.post(f"/api/v1/campaigns/{cid}/preview", json={"user": dyid}, headers=section.mgmt)
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "user"] and "real time" in r.text, r.text
