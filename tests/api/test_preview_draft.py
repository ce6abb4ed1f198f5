"""A preview sends for a draft or paused campaign; ordinary journeys still do not.

Before, a preview's steps were skipped as for any journey of a campaign that is not active
(`campaign_draft`), so a draft could not be previewed before its activation, its main use. A
preview's journey row is now marked (`is_preview`) and its steps send while the campaign is a
draft or paused; archived still skips, and journeys not started by a preview keep skipping."""

from __future__ import annotations

import secrets
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
    journey_handle,
    journey_result,
    outbox,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply


async def _test_user(api: httpx.AsyncClient, section: SectionKeys) -> tuple[str, str]:
    dyid, uid = await reachable_user(api, section)
    r = await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)
    assert r.status_code == 200, r.text
    return dyid, uid


async def _preview(api: httpx.AsyncClient, section: SectionKeys, cid: str, dyid: str, **body: Any) -> None:
    r = await api.post(f"/api/v1/campaigns/{cid}/preview", json={"user": dyid, **body}, headers=section.mgmt)
    assert r.status_code == 202, r.text


async def _journeys(api: httpx.AsyncClient, section: SectionKeys, dyid: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
    assert r.status_code == 200, r.text
    return list(r.json())


async def test_a_preview_of_a_draft_campaign_delivers_to_the_provider(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    path = "/esp/" + secrets.token_hex(4)
    fresh_provider.default(path, Reply(200, {"id": "m-1"}))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=[step("s1"), step("s2", "P2D")]),
                                activate=False)  # fmt: skip
    dyid, uid = await _test_user(api, section)

    await _preview(api, section, cid, dyid)

    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.sent) == ("completed", 2), result
    assert len(fresh_provider.to(path)) == 2
    # The trace shows it, marked as a preview's.
    [journey] = await _journeys(api, section, dyid)
    assert (journey["is_test"], journey["is_preview"], journey["status"]) == (True, True, "completed"), journey
    assert [(d["outcome"], d["reason"]) for d in journey["decisions"]] == [("decided", None), ("sent", None)] * 2
    assert [s["status"] for s in journey["sends"]] == ["accepted", "accepted"], journey["sends"]
    # Reports leave the test user out; the deliveries endpoint counts their sends apart.
    until = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    report = await api.get(f"/api/v1/campaigns/{cid}/report", params={"to": until}, headers=section.mgmt)
    assert report.status_code == 200 and report.json()["totals"]["users_triggered"] == 0, report.text
    deliveries = await api.get(f"/api/v1/campaigns/{cid}/deliveries", params={"to": until}, headers=section.mgmt)
    email = deliveries.json()["channels"]["email"]
    assert (email.get("accepted", 0), email["test_users"]) == (0, 2), email
    # The campaign is still a draft: the preview changed nothing about it.
    assert (await api.get(f"/api/v1/campaigns/{cid}", headers=section.mgmt)).json()["status"] == "draft"


async def test_a_preview_of_a_chosen_variation_of_a_draft_campaign_sends(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    await add_integration(api, section)
    spec = cart_campaign(wait="P1D", variations=[
        {"id": "a", "name": "A", "share": 100, "steps": [step("From A")]},
        {"id": "b", "name": "B", "share": 0, "steps": [step("From B")]}])  # fmt: skip
    cid = await create_campaign(api, section, spec, activate=False)
    dyid, uid = await _test_user(api, section)

    await _preview(api, section, cid, dyid, variation_id="b")

    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    assert [m["payload"]["step"] for m in await outbox(api, section)] == ["From B"]


async def test_a_preview_of_a_paused_campaign_sends(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    assert (await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)).status_code == 200
    dyid, uid = await _test_user(api, section)

    await _preview(api, section, cid, dyid)

    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    assert len(await outbox(api, section)) == 1


async def test_a_preview_of_an_archived_campaign_still_skips(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"), activate=False)
    assert (await api.post(f"/api/v1/campaigns/{cid}/archive", headers=section.mgmt)).status_code == 200
    dyid, uid = await _test_user(api, section)

    await _preview(api, section, cid, dyid)

    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 0 and [d.reason for d in result.decisions] == ["campaign_archived"], result
    assert await outbox(api, section) == []


async def test_an_ordinary_trigger_of_a_draft_campaign_sends_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A draft starts no journey for a shopper's event, nor for a test user's own event."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="PT1H"), activate=False)
    shopper, _ = await reachable_user(api, section)
    tester, _ = await _test_user(api, section)

    for dyid in (shopper, tester):
        await collect(api, section, dyid, add_to_cart("sku-1"))

    assert await _journeys(api, section, shopper) == [] and await _journeys(api, section, tester) == []
    assert await outbox(api, section) == []


async def test_a_journey_not_started_by_a_preview_still_skips_a_paused_campaigns_steps(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        assert (await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)).status_code == 200
        await env.fast_forward(journey_handle(env.client, section, cid, uid))

    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 0 and [d.reason for d in result.decisions] == ["campaign_paused"], result
    [journey] = await _journeys(api, section, dyid)
    assert journey["is_preview"] is False
    assert await outbox(api, section) == []
