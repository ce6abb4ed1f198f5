"""Revenue and currencies (docs/reports.md, "Revenue and currencies").

With no report currency set, revenue adds up every purchase's value as it always did, and the
report shows the breakdown per currency plus a warning when currencies were mixed; with one set,
revenue adds only that currency (and purchases without one), the others are reported apart.
On every path a report takes: counters of whole cohort hours, the raw edges, the raw reference
(`q.load_raw`) and the counters after a rebuild from the raw tables.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete, update
from sqlmodel import col, select

from domain.reports import aggregate
from store import report_rollup
from store import reports as q
from store.engine import Store
from store.report_tables import ReportAttribution, ReportRollup
from store.tables import Event
from tests.helpers import SectionKeys, add_integration, collect, create_campaign, reachable_user, step
from tests.helpers import purchase as purchase_event
from tests.reports_world import World

T0 = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
WINDOW = timedelta(hours=20)
SPEC = {
    "name": "Currencies",
    "type": "cart_abandonment",
    "channel_priority": ["email"],
    "settings": {"primary_metric": "revenue", "attribution_window": "PT20H"},
    "variations": [
        {"id": "a", "name": "A", "share": 50, "steps": [step("S1")]},
        {"id": "b", "name": "B", "share": 50, "steps": [step("S1")]},
    ],
}
WHOLE = (T0, T0 + timedelta(days=3))  # whole hours: counters only
EDGED = (T0 + timedelta(minutes=1), T0 + timedelta(days=3))  # the first hour is a raw edge
RANGE = {"from": WHOLE[0].isoformat(), "to": WHOLE[1].isoformat()}


def purchase(w: World, uid: str, at: datetime, value: float, currency: str | None) -> str:
    """A purchase as ingestion stores it (`data.properties.currency`), through the write path."""
    eid = "evt_" + secrets.token_hex(8)
    props: dict[str, Any] = {"dyType": "purchase-v1", "value": value}
    if currency is not None:
        props["currency"] = currency
    with w.store.session() as s:
        event = Event(id=eid, section_id=w.section_id, user_id=uid, kind="purchase", name="Purchase",
                      data={"kind": "purchase", "properties": props}, received_at=at, value=value)  # fmt: skip
        s.add(event)
        report_rollup.attribute_event(s, event, identified=True)
    return eid


def figures(store: Store, section_id: str, cid: str) -> list[dict[str, Any]]:
    """Purchases, revenue, revenue per day and value per currency per variation, from each path."""
    out = []
    with store.session() as s:
        loads = [
            q.load(s, section_id, cid, *WHOLE, WINDOW),
            q.load(s, section_id, cid, *EDGED, WINDOW),
            q.load_raw(s, section_id, cid, *WHOLE),
        ]
        for data in loads:
            agg = aggregate(data, WINDOW)
            money = q.currency_revenue(data, agg)
            out.append({
                "purchases": {v: b.counts["purchases"] for v, b in agg.variations.items() if b.counts["purchases"]},
                "buyers": {v: b.converters["revenue"] for v, b in agg.variations.items() if b.converters["revenue"]},
                "revenue": {v: round(b.counts["revenue"], 2) for v, b in agg.variations.items() if b.counts["revenue"]},
                "by_day": dict(agg.revenue_by_day),
                "in_revenue": money.in_revenue,
                "apart": money.apart,
            })  # fmt: skip
    return out


def same_on_every_path(store: Store, section_id: str, cid: str) -> dict[str, Any]:
    before = figures(store, section_id, cid)
    with store.session() as s:
        report_rollup.rebuild(s)
    after = figures(store, section_id, cid)
    for got in [*before, *after]:
        assert got == before[0], (before, after)
    return before[0]


async def _mixed_purchases(api: httpx.AsyncClient, store: Store, section: SectionKeys) -> str:
    """Four buyers of A (EUR, usd, JPY, none) and one of B (USD); A's are in the edge hour."""
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)
    buyers = [w.user("a", T0 + timedelta(minutes=5 + i)) for i in range(4)] + [w.user("b", T0 + timedelta(hours=2))]
    for uid in buyers:
        w.hit(uid, "b" if uid == buyers[-1] else "a", "click", T0 + timedelta(hours=3))
    at = T0 + timedelta(hours=4)
    purchase(w, buyers[0], at, 4627.92, "EUR")
    purchase(w, buyers[1], at, 776.34, "usd")  # the code is compared in capitals
    purchase(w, buyers[2], at, 91176, "JPY")
    purchase(w, buyers[3], at, 10, None)
    purchase(w, buyers[4], at, 50, "USD")
    return cid


async def report(api: httpx.AsyncClient, section: SectionKeys, cid: str, **params: str) -> httpx.Response:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", params={**RANGE, **params}, headers=section.mgmt)
    assert r.status_code == 200, r.text
    return r


async def test_no_report_currency_sums_every_purchase_and_shows_the_mix(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await _mixed_purchases(api, store, section)
    assert (await api.get("/api/v1/section", headers=section.mgmt)).json()["currency"] is None

    got = same_on_every_path(store, section.id, cid)
    assert got["purchases"] == {"a": 4, "b": 1} and got["buyers"] == {"a": 4, "b": 1}
    assert got["revenue"] == {"a": 96590.26, "b": 50}, "every purchase's value, as before currencies"
    assert got["by_day"] == {"2026-04-01": 96640.26}
    assert got["in_revenue"] == {"a": {"EUR": 4627.92, "JPY": 91176, "USD": 776.34, "none": 10}, "b": {"USD": 50}}
    assert got["apart"] == {}

    body = (await report(api, section, cid)).json()
    assert body["revenue_currency"] is None
    assert body["totals"]["revenue"] == 96640.26 and body["totals"]["purchases"] == 5
    assert body["totals"]["revenue_by_currency"] == {"EUR": 4627.92, "JPY": 91176, "USD": 826.34, "none": 10}
    assert body["totals"]["revenue_other_currencies"] == {}
    a = next(v for v in body["variations"] if v["id"] == "a")
    assert a["revenue_by_currency"]["JPY"] == 91176 and a["revenue_other_currencies"] == {}
    assert [w["code"] for w in body["warnings"]] == ["mixed_currencies"]
    assert body["warnings"][0]["currencies"] == ["EUR", "JPY", "USD"]

    csv_text = (await report(api, section, cid, format="csv")).text
    assert "revenue_by_currency" in csv_text and "EUR 4627.92; JPY 91176.00; USD 776.34; none 10.00" in csv_text
    page = await api.get(f"/api/v1/campaigns/{cid}/report.html", params=RANGE, headers=section.mgmt)
    assert "Revenue by currency" in page.text and "as if they were one currency" in page.text


async def test_a_report_currency_keeps_other_currencies_out_of_revenue(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await _mixed_purchases(api, store, section)
    for bad in ("EURO", "E1R", "", "€€€", 978):
        r = await api.patch("/api/v1/section", json={"currency": bad}, headers=section.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "currency", (bad, r.text)

    r = await api.patch("/api/v1/section", json={"currency": "eur"}, headers=section.mgmt)
    assert r.status_code == 200 and r.json()["currency"] == "EUR"
    assert (await api.get("/api/v1/section", headers=section.mgmt)).json()["currency"] == "EUR"
    r = await api.patch("/api/v1/section", json={"fallback_url": None}, headers=section.mgmt)
    assert r.json()["currency"] == "EUR", "left out: kept"

    got = same_on_every_path(store, section.id, cid)
    assert got["purchases"] == {"a": 4, "b": 1}, "purchases in any currency still count"
    assert got["buyers"] == {"a": 4, "b": 1}, "and so do their buyers"
    assert got["revenue"] == {"a": 4637.92}, "EUR plus the purchase without a currency, nothing else"
    assert got["by_day"] == {"2026-04-01": 4637.92}
    assert got["in_revenue"] == {"a": {"EUR": 4627.92, "none": 10}}
    assert got["apart"] == {"a": {"JPY": 91176, "USD": 776.34}, "b": {"USD": 50}}

    body = (await report(api, section, cid)).json()
    assert body["revenue_currency"] == "EUR" and body["warnings"] == []
    assert body["totals"]["revenue"] == 4637.92 and body["totals"]["purchases"] == 5
    assert body["totals"]["revenue_by_currency"] == {"EUR": 4627.92, "none": 10}
    assert body["totals"]["revenue_other_currencies"] == {"JPY": 91176, "USD": 826.34}
    b = next(v for v in body["variations"] if v["id"] == "b")
    assert b["metrics"]["revenue"]["count"] == 0 and b["revenue_other_currencies"] == {"USD": 50}
    a = next(v for v in body["variations"] if v["id"] == "a")
    assert (a["buyers"], b["buyers"]) == (4, 1) and a["conversion_rate"] == 4 / a["users"]
    page = await api.get(f"/api/v1/campaigns/{cid}/report.html", params=RANGE, headers=section.mgmt)
    assert "<span>Revenue (EUR)</span>" in page.text  # an exported page says what revenue adds up

    r = await api.patch("/api/v1/section", json={"currency": None}, headers=section.mgmt)
    assert r.status_code == 200 and r.json()["currency"] is None
    assert (await report(api, section, cid)).json()["totals"]["revenue"] == 96640.26


async def test_attributions_stored_before_the_currency_get_it_once_at_start_up(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await _mixed_purchases(api, store, section)
    await api.patch("/api/v1/section", json={"currency": "EUR"}, headers=section.mgmt)
    marker = (col(ReportRollup.campaign_id) == "", col(ReportRollup.metric) == "migrated_ccy")
    with store.session() as s:  # as a database from before the column: no currency, no marker
        s.execute(update(ReportAttribution).where(col(ReportAttribution.campaign_id) == cid).values(currency=None))
        s.execute(delete(ReportRollup).where(*marker))
    with store.session() as s:
        body_before = q.load(s, section.id, cid, *WHOLE, WINDOW)
        assert aggregate(body_before, WINDOW).variations["a"].counts["revenue"] > 90000, "all read as no currency"
    with store.session() as s:
        assert report_rollup.fill_attribution_currency_once(s) >= 1
    with store.session() as s:
        stored = dict(s.exec(select(ReportAttribution.value, ReportAttribution.currency)
                             .where(ReportAttribution.campaign_id == cid)).all())  # fmt: skip
        assert stored == {4627.92: "EUR", 776.34: "USD", 91176: "JPY", 10: None, 50: "USD"}
        assert s.exec(select(ReportRollup).where(*marker)).one().n == 1
        assert report_rollup.fill_attribution_currency_once(s) == 0, "once per database"
    assert (await report(api, section, cid)).json()["totals"]["revenue"] == 4637.92


async def test_ingestion_keeps_the_purchase_currency_for_attribution(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """The currency sent with `purchase-v1` reaches the attribution written at ingestion."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)
    dyid, uid = await reachable_user(api, section)
    w.retrigger(uid, "a", T0)
    w.hit(uid, "a", "click", T0 + timedelta(hours=1))
    event = purchase_event([("sku-1", 12.5)])
    event["properties"]["currency"] = "usd"
    await collect(api, section, dyid, event)
    with store.session() as s:
        event_id = s.exec(select(Event.id).where(Event.user_id == uid, Event.kind == "purchase")).one()
        row = s.get(ReportAttribution, (cid, event_id))
        assert row is not None and row.currency == "USD" and row.value == 12.5
