"""Failed sends listed (`GET /api/v1/campaigns/{id}/deliveries/failed`): a journey whose provider
rejected every step ends "completed" in Temporal like one that sent, and the deliveries summary has
only counts and reasons; an operator trial could not find whose sends failed."""

from __future__ import annotations

import base64
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
from workflows.ids import journey_workflow_id


async def test_failed_sends_are_listed_by_journey_and_user_page_by_page_masked(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    path = "/esp/" + secrets.token_hex(4)
    fresh_provider.script(
        path,
        Reply(400, {"error": "invalid recipient shopper0@example.com"}),
        Reply(200, {"id": "m1"}),
        Reply(400, {"error": "invalid recipient shopper2@example.com"}),
        Reply(422, {"error": "invalid recipient shopper3@example.com"}),
    )
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    users = []
    for _ in range(4):  # one after the other: the script's replies go in order
        dyid, uid = await reachable_user(api, section)
        await collect(api, section, dyid, add_to_cart("sku-1"))
        result = await journey_result(env.client, section, cid, uid)
        users.append((uid, result))
    failed_users = [users[0], users[2], users[3]]
    assert [r.sent for _, r in users] == [0, 1, 0, 0]

    url = f"/api/v1/campaigns/{cid}/deliveries/failed"
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()  # sends carry the skipped-ahead time
    seen: list[dict[str, object]] = []
    after = None
    pages = 0
    while True:
        params = {"to": until, "limit": "2", **({"after": after} if after else {})}
        r = await api.get(url, params=params, headers=section.mgmt)
        assert r.status_code == 200, r.text
        body = r.json()
        for leaked in ("shopper0@", "shopper2@", "shopper3@"):
            assert leaked not in r.text, r.text
        seen += body["failures"]
        pages += 1
        after = body["next"]
        if after is None:
            break
        assert len(body["failures"]) == 2
    assert pages == 2 and len(seen) == 3, seen
    assert [f["user_id"] for f in seen] == [uid for uid, _ in failed_users]
    for f, (uid, result) in zip(seen, failed_users, strict=True):
        assert f["journey_id"] == result.journey_id
        assert f["workflow_id"] == journey_workflow_id(section.id, cid, uid)
        assert (f["step_index"], f["channel"], f["test_user"]) == (0, "email", False)
        assert "invalid recipient" in str(f["reason"]) and "***" in str(f["reason"])
        assert f["failed_at"] and f["created_at"]
    assert [f["provider_status"] for f in seen] == [400, 400, 422]

    # Another section's key does not see the campaign; a made-up page position is refused.
    other = await make_section(api)
    assert (await api.get(url, headers=other.mgmt)).status_code == 404
    for bad in ("nonsense", base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", "k"]').decode(),
                base64.urlsafe_b64encode(b"{}").decode()):  # fmt: skip
        r = await api.get(url, params={"after": bad}, headers=section.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "after"], r.text
    assert (await api.get(url, params={"limit": "0"}, headers=section.mgmt)).status_code == 422
