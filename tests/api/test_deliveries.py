"""Delivery health (`GET /api/v1/campaigns/{id}/deliveries`): a campaign's provider calls by
channel and status, and its most frequent failure reasons with addresses masked."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Journey, Send
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


def _journey_with_sends(store: Store, section: SectionKeys, cid: str, is_test: bool, *sends: Send) -> None:
    """A journey row (a test user's or not) and its sends, as the engine writes them."""
    jid = "j_" + secrets.token_hex(6)
    at = datetime.now(UTC) - timedelta(hours=1)
    with store.session() as s:
        s.add(Journey(id=jid, workflow_id="w", section_id=section.id, campaign_id=cid, campaign_version=1,
                      user_id="usr_" + jid, variation_id="a", is_test=is_test, triggered_at=at))  # fmt: skip
        for i, send in enumerate(sends):
            send.key, send.journey_id, send.step_index, send.user_id = f"{jid}:{i}:email", jid, i, "usr_" + jid
            send.section_id, send.campaign_id, send.created_at, send.updated_at = section.id, cid, at, at
            s.add(send)


def _send(status: str, duplicate: bool = False, reason: str | None = None) -> Send:
    return Send(key="", journey_id="", section_id="", campaign_id="", variation_id="a", step_index=0,
                channel="email", integration_id="i", user_id="", status=status, possible_duplicate=duplicate,
                provider_status=400 if reason else 200, provider_response=reason,
                created_at=datetime.now(UTC), updated_at=datetime.now(UTC))  # fmt: skip


async def test_test_users_failures_and_duplicates_are_counted_apart(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """A test user's failed or possibly duplicated send is in the test users' figures only, like its count."""
    cid = await create_campaign(api, section, cart_campaign(), activate=False)
    _journey_with_sends(store, section, cid, False, _send("failed", reason='{"error": "mailbox full"}'),
                        _send("accepted", duplicate=True))  # fmt: skip
    _journey_with_sends(store, section, cid, True, _send("failed", reason='{"error": "bad tester address"}'),
                        _send("failed", reason='{"error": "bad tester address"}'),
                        _send("accepted", duplicate=True), _send("accepted", duplicate=True))  # fmt: skip
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}  # the sends are an hour old
    r = await api.get(f"/api/v1/campaigns/{cid}/deliveries", params=window, headers=section.mgmt)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["channels"] == {
        "email": {"accepted": 1, "failed": 1, "possible_duplicates": 1, "test_users": 4,
                  "test_users_possible_duplicates": 2}  # fmt: skip
    }, body
    assert [(x["reason"], x["count"]) for x in body["failure_reasons"]] == [('{"error": "mailbox full"}', 1)], body
    assert [(x["reason"], x["count"]) for x in body["test_user_failure_reasons"]] == [
        ('{"error": "bad tester address"}', 2)
    ], body


async def test_failures_differing_only_by_a_request_id_are_one_reason(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """A vendor whose error body carries a request id (a UUID, a hex token, a long number) made every
    failure its own reason: a trial saw 30 failures listed as 30 reasons of one each. The ids are
    replaced before the reasons are grouped; the error itself is kept."""
    cid = await create_campaign(api, section, cart_campaign(), activate=False)
    bodies = [
        f'{{"error": "invalid token", "request_id": "{uuid.uuid4()}", "trace": "{secrets.token_hex(8)}", '
        f'"ts": {1733560000000 + i}}}'
        for i in range(30)
    ]
    for body in bodies:
        _journey_with_sends(store, section, cid, False, _send("failed", reason=body))
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}
    r = await api.get(f"/api/v1/campaigns/{cid}/deliveries", params=window, headers=section.mgmt)
    assert r.status_code == 200, r.text
    [reason] = r.json()["failure_reasons"]
    assert reason["count"] == 30 and "invalid token" in reason["reason"], reason
    assert not any(body.split('"')[7] in r.text for body in bodies)  # no request id shown
