"""Opt-in / opt-out API (Experience API shape): validation, case-insensitive channels, next decision."""

from __future__ import annotations

from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.reachability import reach
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    journey_handle,
    journey_result,
    reachable_user,
)


async def _opt(
    api: httpx.AsyncClient, sec: SectionKeys, channel: str, action: str, id_type: str, value: str
) -> httpx.Response:
    body: dict[str, Any] = {"identifier": {"type": id_type, "value": value}}
    return await api.post(f"/v2/userdata/channels/{channel}/{action}", json=body, headers=sec.ing)


async def test_opt_in_validation_names_the_field(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Unknown channels, a missing integration, a type other than the integration's and bad values are 422s."""
    r = await _opt(api, section, "fax", "opt-in", "email", "a@example.com")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "channel"]
    r = await _opt(api, section, "email", "opt-in", "email", "a@example.com")
    assert r.status_code == 422 and "no email integration" in r.json()["error"]
    await add_integration(api, section)
    await add_integration(api, section, channel="sms")
    r = await _opt(api, section, "Email", "opt-in", "phoneNumber", "+15551234567")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "identifier", "type"]
    r = await _opt(api, section, "email", "opt-in", "email", "not-an-email")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "identifier", "value"]
    r = await _opt(api, section, "SMS", "opt-in", "phoneNumber", "555-CALL-NOW")
    assert r.status_code == 422 and "E.164" in r.json()["error"]
    r = await _opt(api, section, "SMS", "opt-in", "PHONENUMBER", "+15551234567")
    assert r.status_code == 200 and r.json() == {"channel": "sms", "status": "opted_in"}


async def test_opt_out_and_back_in_change_reachability(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """Opt-out makes the identified user unreachable on the channel at once; opting in again restores it."""
    await add_integration(api, section)
    dyid, uid = await reachable_user(api, section)

    def reachable() -> bool:
        with store.session() as s:
            return "email" in reach(s, section.id, uid, ["email"]).opt_ins

    assert reachable()
    assert (await _opt(api, section, "EMAIL", "opt-out", "email", email_for(dyid).upper())).status_code == 200
    assert not reachable()
    assert (await _opt(api, section, "email", "opt-in", "Email", email_for(dyid))).status_code == 200
    assert reachable()


async def test_opt_out_during_wait_skips_the_next_step(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """An opt-out while a journey waits takes effect for its very next send decision."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT2H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-o", 3.0))
    assert (await _opt(api, section, "email", "opt-out", "email", email_for(dyid))).status_code == 200
    await env.fast_forward(journey_handle(env.client, section, cid, uid))
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 0 and [d.reason for d in result.decisions] == ["not_opted_in"], result
