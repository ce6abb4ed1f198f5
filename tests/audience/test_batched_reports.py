"""Batched campaigns in reports and priority: a run's recipients are allocated like triggered
journeys (a journey row each), so the campaign report counts them per variation, holdout
included, with their sends, push clicks and attributed purchases; and a campaign of higher
priority that sent to a user outranks lower ones, batched or triggered, within the window."""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment

from api.routes.reports import build_report
from domain.allocation import allocate
from store import report_rollup
from store.broadcast_tables import BroadcastRecipient
from store.campaigns import load_spec
from store.engine import Store
from store.tables import Campaign, Send
from tests.audience.feed_helpers import batch_campaign, campaign_sends, run_result
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    journey_result,
    login,
    new_dyid,
    outbox,
    purchase,
    step,
)
from tests.tracking.test_tracking_api import age_send

FAR = datetime(2100, 1, 1, tzinfo=UTC)  # sends carry (skipped-ahead) workflow time


async def _push_shopper(api: httpx.AsyncClient, sec: SectionKeys) -> tuple[str, str]:
    """An identified shopper opted in to app push: (dyid, user id)."""
    dyid = new_dyid()
    optin = {"name": "Opt-in", "properties": {"dyType": "message-optin-v1", "pushID": "tok-" + secrets.token_hex(6),
                                              "channelType": "APP_PUSH"}}  # fmt: skip
    await collect(api, sec, dyid, optin, login(email_for(dyid)))
    r = await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dyid, str(r.json()["id"])


def _scheduled(name: str, priority: int, variations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    payload = {"title": name, "trackingData": "${Push tracking data}"}
    spec.update(name=name, priority=priority,
                variations=variations or [{"id": "a", "name": "A", "share": 100, "steps": [step("Only", channels=("app_push",), payload=payload)]}])  # fmt: skip
    return spec


async def _run(api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, cid: str) -> Any:
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=sec.mgmt)
    assert r.status_code == 202, r.text
    return await run_result(env.client, str(r.json()["id"]))


async def _report(api: httpx.AsyncClient, sec: SectionKeys, cid: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=sec.mgmt, params={"to": FAR.isoformat()})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_batched_campaign_reports_its_variations_holdout_clicks_and_revenue(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section, channel="app_push")
    payload = {"title": "Sale", "trackingData": "${Push tracking data}"}
    only = [step("Only", channels=("app_push",), payload=payload)]
    cid = await create_campaign(api, section, _scheduled("Weekend sale", 50, [
        {"id": "a", "name": "A", "share": 40, "steps": only},
        {"id": "b", "name": "B", "share": 40, "steps": only},
        {"id": "hold", "name": "Holdout", "share": 20, "control": True}]))  # fmt: skip
    shoppers = [await _push_shopper(api, section) for _ in range(12)]
    progress = await _run(api, env, section, cid)

    with store.session() as s:
        campaign = s.get(Campaign, cid)
        assert campaign is not None
        spec = load_spec(s, cid, campaign.version)
    allocated = {uid: allocate(cid, uid, spec.variations).id for _, uid in shoppers}
    held = [uid for uid, v in allocated.items() if v == "hold"]
    assert (progress.sent, progress.skipped) == (12 - len(held), len(held)), progress
    sends = await campaign_sends(store, cid)
    assert {s.user_id: s.variation_id for s in sends} == {u: v for u, v in allocated.items() if v != "hold"}

    # One recipient of a sending variation taps the push, then buys: attributed to the campaign.
    buyer_dyid, buyer = next((d, u) for d, u in shoppers if allocated[u] != "hold")
    (sent,) = [s for s in sends if s.user_id == buyer]
    age_send(store, sent.key)
    with store.session() as s:
        tracking = next(m for m in s.exec(select(Send).where(Send.key == sent.key)))
        assert tracking.journey_id.startswith("bj_")  # the recipient's journey row, not the run
    r = await api.get(f"/api/v1/users/{buyer_dyid}/journeys", headers=section.mgmt)
    assert r.status_code == 200, r.text
    (journey,) = [j for j in r.json() if j["campaign_id"] == cid]
    assert (journey["status"], journey["variation_id"]) == ("completed", allocated[buyer])
    assert [(x["channel"], x["status"]) for x in journey["sends"]] == [("app_push", "accepted")]
    rjt = await _push_token(api, section, sent.key)
    r = await api.post("/v2/collect/user/engagement", headers=section.ing, json={
        "user": {"dyid": buyer_dyid}, "engagements": [{"type": "PN_CLICK", "trackingData": {"rjt": rjt}}]})  # fmt: skip
    assert r.status_code == 202 and r.json()["recorded"] == 1, r.text
    await collect(api, section, buyer_dyid, purchase([("sku-1", 30.0)], tx="order-7"))

    body = await _report(api, section, cid)
    assert body["totals"]["users_triggered"] == 12
    v = {x["id"]: x for x in body["variations"]}
    counts = Counter(allocated.values())
    assert {k: x["users"] for k, x in v.items()} == {k: counts.get(k, 0) for k in ("a", "b", "hold")}
    for k in ("a", "b"):
        assert v[k]["metrics"]["send_requests"]["count"] == counts.get(k, 0), v[k]
    won = v[allocated[buyer]]["metrics"]
    assert (won["clicks"]["count"], won["purchases"]["count"], won["revenue"]["count"]) == (1, 1, 30)

    # The counters the run kept equal the raw recompute, and a rebuild from the raw rows agrees.
    with store.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        kept = build_report(s, c, spec, c.created_at, FAR)
        assert kept == build_report(s, c, spec, c.created_at, FAR, raw=True)
        report_rollup.rebuild(s, [cid])
    with store.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        assert build_report(s, c, spec, c.created_at, FAR) == kept


async def _push_token(api: httpx.AsyncClient, sec: SectionKeys, send_key: str) -> str:
    """The `rjt` push tracking token the recipient's app received in the payload."""
    (msg,) = [m for m in await outbox(api, sec) if m["send_key"] == send_key]
    return str(msg["payload"]["trackingData"]["rjt"])


async def test_a_batched_send_of_higher_priority_outranks_later_batched_and_triggered_campaigns(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section, channel="app_push")
    shoppers = [await _push_shopper(api, section) for _ in range(3)]
    high = await create_campaign(api, section, _scheduled("Flash sale", 80))
    low = await create_campaign(api, section, _scheduled("Newsletter", 20))
    cart_step = step("Reminder", channels=("app_push",))
    cart = await create_campaign(
        api, section, cart_campaign("Cart", priority=30, channel_priority=["app_push"], steps=[cart_step])
    )
    assert (await _run(api, env, section, high)).sent == 3
    progress = await _run(api, env, section, low)
    assert (progress.sent, progress.skipped) == (0, 3), progress
    with store.session() as s:
        mine = select(BroadcastRecipient).where(col(BroadcastRecipient.user_id).in_([u for _, u in shoppers]))
        reasons = {(r.status, r.reason) for r in s.exec(mine) if r.status != "sent"}
    assert reasons == {("skipped", f"outranked: campaign {high} (priority 80)")}, reasons
    assert await campaign_sends(store, low) == []

    # A lower-priority journey triggered after the flash sale's push yields to it too.
    dyid, uid = shoppers[0]
    await collect(api, section, dyid, add_to_cart("sku-1", 20.0))
    result = await journey_result(env.client, section, cart, uid)
    outranked = [("skipped", f"outranked: campaign {high} (priority 80)")]
    assert [(d.outcome, d.reason) for d in result.decisions] == outranked, result.decisions
