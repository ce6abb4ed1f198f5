"""The campaign report counts sends that failed for good and provider-reported opt-outs, per
variation, channel and step, in JSON and CSV, from real journeys whose provider refused them;
the pre-aggregated counters, the raw reference and a rebuild agree."""

from __future__ import annotations

import csv
import io
import json
import secrets
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from store import report_rollup
from store.engine import Store
from store.report_rollup import hour_of
from store.tables import now_utc
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    new_dyid,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from tests.providers.keys import ec_key, pem
from tests.providers.test_push_and_smtp import Browser


async def _push_user(api: httpx.AsyncClient, sec: SectionKeys, browser: Browser, sku: str) -> tuple[str, str]:
    """A user reachable by web push only, who abandons a cart: (dyid, user id)."""
    dyid = new_dyid()
    optin = {"name": "Push opt-in", "properties": {"dyType": "message-optin-v1", "channelType": "WEB_PUSH",
                                                   "pushID": json.dumps(browser.subscription)}}  # fmt: skip
    await collect(api, sec, dyid, optin, add_to_cart(sku))
    uid = (await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)).json()["id"]
    return dyid, str(uid)


def _delivery(body: dict[str, Any]) -> dict[str, Any]:
    """The delivery figures of a report: totals, per variation and per channel."""
    names = ("send_requests", "failed_sends", "provider_opt_outs")

    def counts(row: dict[str, Any]) -> tuple[int, ...]:
        return tuple(row["metrics"][m]["count"] for m in names)

    return {
        "totals": tuple(body["totals"][m] for m in names),
        "variations": {v["id"]: counts(v) for v in body["variations"]},
        "channels": {(c["variation_id"], c["channel"]): counts(c) for c in body["channels"]},
        "steps": {(st["variation_id"], st["step_index"]): counts(st) for st in body["steps"]},
    }


async def test_report_counts_failed_sends_and_provider_opt_outs(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """Email: a 400 fails for good, a 503 then 200 is retried and accepted, a 200 is accepted.
    Web push: a 410 fails and opts the subscription out. The report shows 2 of 4 send requests
    failed and 1 provider opt-out, on the right channels, over the counters (whole hours), the
    raw edges (default range) and after a rebuild; the CSV has the columns."""
    path = "/esp/" + secrets.token_hex(4)
    fresh_provider.script(path, Reply(400, {"error": "invalid recipient"}), Reply(503), Reply(200, {"id": "m2"}),
                          Reply(200, {"id": "m3"}))  # fmt: skip
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    push_path = "/push/" + secrets.token_hex(4)
    fresh_provider.default(push_path, Reply(410, "push subscription has unsubscribed or expired"))
    vapid = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    await add_integration(api, section, "web_push", kind="webpush", identifier_type="custom", config=vapid)
    spec = cart_campaign(wait="PT1H", channel_priority=["email", "web_push"],
                         steps=[step("Nudge", channels=("email", "web_push"))])  # fmt: skip
    cid = await create_campaign(api, section, spec)
    for n in range(3):  # one after the other: the script's replies go in order (400; 503 then 200; 200)
        dyid, uid = await reachable_user(api, section)
        await collect(api, section, dyid, add_to_cart(f"sku-{n}"))
        await journey_result(env.client, section, cid, uid)
    _, uid = await _push_user(api, section, Browser(fresh_provider.url(push_path)), "sku-push")
    result = await journey_result(env.client, section, cid, uid)
    assert [(d.outcome, d.channel) for d in result.decisions if d.outcome == "failed"] == [("failed", "web_push")]

    expected = {
        "totals": (4, 2, 1),
        "variations": {"a": (4, 2, 1)},
        "channels": {("a", "email"): (3, 1, 0), ("a", "web_push"): (1, 1, 1)},
        "steps": {("a", 0): (4, 2, 1)},
    }
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt)  # default range: raw edges
    assert r.status_code == 200, r.text
    assert _delivery(r.json()) == expected, r.json()
    whole_hours = {"from": (hour_of(now_utc()) - timedelta(hours=2)).isoformat(),
                   "to": (hour_of(now_utc()) + timedelta(hours=2)).isoformat()}  # fmt: skip
    counters = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params=whole_hours)
    assert _delivery(counters.json()) == expected, counters.json()
    with store.session() as s:
        report_rollup.rebuild(s, [cid])
        s.commit()
    rebuilt = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params=whole_hours)
    assert _delivery(rebuilt.json()) == expected, rebuilt.json()
    outside = {"from": (hour_of(now_utc()) + timedelta(hours=1)).isoformat(),
               "to": (hour_of(now_utc()) + timedelta(hours=3)).isoformat()}  # fmt: skip
    later = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params=outside)
    assert later.json()["totals"]["failed_sends"] == 0  # a cohort first triggered later: none of these

    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params={**whole_hours, "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    variation = next(x for x in rows if x["section"] == "variation")
    assert (variation["failed_sends"], variation["provider_opt_outs"]) == ("2", "1"), variation
    push = next(x for x in rows if x["section"] == "channel" and x["channel"] == "web_push")
    assert (push["send_requests"], push["failed_sends"], push["provider_opt_outs"]) == ("1", "1", "1"), push
    page = await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt)
    assert page.status_code == 200 and "Failed sends" in page.text


async def test_sends_failed_before_the_failure_counters_are_counted_once_at_startup(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """A deployment from before the failure counters has failed sends and no `failed` rows: the
    startup migration rebuilds those campaigns once (a marker row), and whole hours count them."""
    cid = await _campaign_with_one_failed_send(api, env, section, fresh_provider)
    rollup = report_rollup.ROLLUP
    with store.session() as s:  # as the counters were before this version: no failure rows, no marker
        s.execute(rollup.delete().where(rollup.c.metric.in_(("failed", "opt_outs", "migrated_failed"))))
    whole_hours = {"from": (hour_of(now_utc()) - timedelta(hours=2)).isoformat(),
                   "to": (hour_of(now_utc()) + timedelta(hours=2)).isoformat()}  # fmt: skip

    async def failed() -> int:
        r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params=whole_hours)
        return int(r.json()["totals"]["failed_sends"])

    assert await failed() == 0
    with store.session() as s:
        assert report_rollup.count_old_failures_once(s) >= 1
    assert await failed() == 1
    with store.session() as s:
        assert report_rollup.count_old_failures_once(s) == 0  # once per database


async def test_the_start_up_migrations_run_once_in_one_rebuild(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A campaign both migrations concern (a failed send; the markers gone, as before them) is
    rebuilt once, both markers are written, and the next start rebuilds nothing."""
    cid = await _campaign_with_one_failed_send(api, env, section, fresh_provider)
    rollup = report_rollup.ROLLUP
    with store.session() as s:
        s.execute(rollup.delete().where(rollup.c.metric.in_(("migrated_failed", "migrated_ccy"))))
    rebuilt: list[list[str]] = []
    real = report_rollup.rebuild

    def counting(s: Any, campaign_ids: Any = None) -> int:
        rebuilt.append(list(campaign_ids or []))
        return real(s, campaign_ids)

    monkeypatch.setattr(report_rollup, "rebuild", counting)
    with store.session() as s:
        assert report_rollup.migrate_reports(s) >= 1
    with store.session() as s:
        assert report_rollup.migrate_reports(s) == 0
    assert len(rebuilt) == 1 and rebuilt[0].count(cid) == 1, rebuilt
    with store.session() as s:
        markers = s.execute(select(rollup.c.metric).where(rollup.c.campaign_id == "")).scalars().all()
        assert {"migrated_failed", "migrated_ccy"} <= set(markers)


async def _campaign_with_one_failed_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, provider: ProviderServer
) -> str:
    """A campaign whose one journey's send the provider refused for good (400); its id."""
    path = "/esp/" + secrets.token_hex(4)
    provider.default(path, Reply(400, {"error": "invalid recipient"}))
    await add_integration(api, section, kind="custom_http", config={"url": provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await journey_result(env.client, section, cid, uid)
    return cid
