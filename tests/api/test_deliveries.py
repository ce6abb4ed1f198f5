"""Delivery health (`GET /api/v1/campaigns/{id}/deliveries`): a campaign's provider calls by
channel and status, and its most frequent failure reasons with addresses masked."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.helpers import (
    SectionKeys,
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


async def test_failures_are_counted_and_explained_with_addresses_masked(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    path = "/esp/" + secrets.token_hex(4)
    rejected = [Reply(400, {"error": f"invalid recipient shopper{i}@example.com"}) for i in range(2)]
    fresh_provider.script(path, *rejected, Reply(200, {"id": "m1"}))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    for _ in range(3):  # one after the other: the script's replies go in order
        dyid, uid = await reachable_user(api, section)
        await collect(api, section, dyid, add_to_cart("sku-1"))
        await journey_result(env.client, section, cid, uid)
    # The sends are stamped with the journey's (skipped-ahead) time: ask up to a day ahead.
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await api.get(f"/api/v1/campaigns/{cid}/deliveries", params={"to": until}, headers=section.mgmt)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["channels"] == {"email": {"accepted": 1, "failed": 2}}, body
    [reason] = body["failure_reasons"]  # two addresses, one reason once masked
    assert (reason["channel"], reason["provider_status"], reason["count"]) == ("email", 400, 2), reason
    assert "invalid recipient" in reason["reason"] and "shopper0@" not in r.text and "shopper1@" not in r.text


async def test_another_sections_campaign_and_bad_ranges_are_refused(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    cid = await create_campaign(api, section, cart_campaign())
    other = await make_section(api)
    assert (await api.get(f"/api/v1/campaigns/{cid}/deliveries", headers=other.mgmt)).status_code == 404
    r = await api.get(f"/api/v1/campaigns/{cid}/deliveries", params={"from": "2026-01-01T00:00:00"}, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "from"], r.text
    r = await api.get(f"/api/v1/campaigns/{cid}/deliveries", headers=section.mgmt)
    assert r.json()["channels"] == {} and r.json()["failure_reasons"] == []
