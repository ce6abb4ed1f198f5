"""A holdout is measured like every other arm: enrolled-user conversions (docs/reports.md, "Holdout
comparison"). Click attribution gives a holdout, sent nothing, no purchase ever, so any uplift over
it was meaningless; the report now compares each arm with the holdout on the purchases its users
made within the attribution window after their first enrollment, clicked or not. The counters,
the raw reference, identity merges, a rebuild, the start-up migration and `rejoin rebuild-reports`
agree; a real purchase ingested through the API (an anonymous holdout user) counts.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select
from sqlmodel import col

from api.routes.reports import build_report
from domain import reports as domain_reports
from domain.reports import aggregate
from runtime.cli import main as cli_main
from settings import Settings
from store import report_rollup, report_tables, users
from store import reports as q
from store.campaigns import load_spec
from store.engine import Store
from store.report_tables import ReportRollup
from store.tables import Campaign, Send, User
from tests.api.test_report_rollup import _view
from tests.helpers import SectionKeys, add_to_cart, collect, create_campaign, holdout_campaign, new_dyid, purchase, step
from tests.reports_world import World

T0 = datetime(2026, 5, 4, tzinfo=UTC)
WINDOW = timedelta(days=1)
SPEC = {
    "name": "Holdout test",
    "type": "cart_abandonment",
    "channel_priority": ["email"],
    "settings": {"primary_metric": "purchases", "attribution_window": "P1D"},
    "variations": [
        {"id": "a", "name": "A", "share": 45, "steps": [step("S1")]},
        {"id": "b", "name": "B", "share": 45, "steps": [step("S1")]},
        {"id": "hold", "name": "Holdout", "share": 10, "control": True},
    ],
}
WHOLE_HOURS = (T0, T0 + timedelta(days=3))  # counters only
EDGES = (T0 + timedelta(minutes=1), T0 + timedelta(days=2, minutes=30))  # the first hour's users: raw edge


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@pytest.fixture
def few_users_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """These worlds have a few users per arm, below the winner's minimum sample, which the holdout
    comparison takes too (no interval or probability below it: tests/domain/test_report_small_samples.py).
    Lowered here so the comparison's figures on every path are tested all the same."""
    monkeypatch.setattr(domain_reports, "MIN_USERS", 1)
    monkeypatch.setattr(domain_reports, "MIN_CONVERSIONS", 1)


def _report(store: Store, cid: str, span: tuple[datetime, datetime], *, raw: bool = False) -> dict[str, Any]:
    with store.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        return build_report(s, c, load_spec(s, cid, c.version), *span, raw=raw)


def _holdout_world(store: Store, section_id: str, cid: str) -> None:
    """Holdout: 5 users, 2 of whom buy within the window (one anonymous); A: 4 users, 2 buyers, one
    of whom clicked first (the only click-attributed purchase); B: 4 users, none buys."""
    w = World(store, section_id, cid)
    hold = [w.user("hold", h(0.5), control=True) for _ in range(3)] + [
        w.user("hold", h(0.5), identified=False, control=True),
        w.user("hold", h(0.5), control=True),
    ]
    w.event(hold[0], "purchase", h(2), 30.0, "T-h0")
    w.event(hold[1], "purchase", h(0.5 + 30), 99.0)  # after the 1-day window: not a conversion
    w.event(hold[2], "purchase", h(0.25), 99.0)  # before enrollment: not a conversion
    w.event(hold[3], "purchase", h(3), 20.0)  # anonymous: the user's own purchase, converts
    arm_a = [w.user("a", h(0.5)) for _ in range(4)]
    w.send(arm_a[0], "a", 0, "email", h(1))
    w.hit(arm_a[0], "a", "click", h(1.5))
    w.event(arm_a[0], "purchase", h(2), 40.0, "T-a0")  # click-attributed too
    w.event(arm_a[1], "purchase", h(5), 10.0, "T-a1")  # no click: a conversion, not attributed
    w.event(arm_a[1], "purchase", h(6), 10.0, "T-a1")  # a repeat of its transaction: never again
    for _ in range(4):
        uid = w.user("b", h(0.5))
        w.send(uid, "b", 0, "email", h(1))


async def test_every_arm_and_the_holdout_are_measured_by_enrolled_conversions(
    api: httpx.AsyncClient, store: Store, section: SectionKeys, few_users_measured: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    cid = await create_campaign(api, section, SPEC, activate=False)
    _holdout_world(store, section.id, cid)
    body = _report(store, cid, WHOLE_HOURS)
    rows = {v["id"]: v for v in body["variations"]}
    assert rows["hold"]["enrolled_conversions"] == {
        "purchases": 2, "buyers": 2, "conversion_rate": 0.4, "revenue": 50.0, "revenue_per_user": 10.0,
        "revenue_by_currency": {"none": 50.0}, "revenue_other_currencies": {},
    }  # fmt: skip
    assert rows["a"]["enrolled_conversions"] == {
        "purchases": 2, "buyers": 2, "conversion_rate": 0.5, "revenue": 50.0, "revenue_per_user": 12.5,
        "revenue_by_currency": {"none": 50.0}, "revenue_other_currencies": {},
    }  # fmt: skip
    assert rows["b"]["enrolled_conversions"]["buyers"] == 0
    # The click-attributed figures are kept as they were: the holdout's are 0 by construction.
    assert [rows[v]["metrics"]["purchases"]["count"] for v in ("a", "b", "hold")] == [1, 0, 0]
    assert body["totals"]["enrolled_conversions"] == {
        "purchases": 4, "buyers": 4, "revenue": 100.0, "revenue_by_currency": {"none": 100.0},
        "revenue_other_currencies": {},
    }  # fmt: skip

    comparison = body["holdout_comparison"]
    assert (comparison["holdout"], comparison["status"], comparison["reason"]) == ("hold", "measured", None)
    assert "first enrollment" in comparison["rule"]
    conversion = comparison["metrics"]["conversion_rate"]
    assert conversion["status"] == "measured" and conversion["holdout"] == 0.4
    by_arm = {r["id"]: r for r in conversion["variations"]}
    assert by_arm["a"]["value"] == 0.5 and by_arm["b"]["value"] == 0.0
    low, high = by_arm["a"]["uplift"]["low"], by_arm["a"]["uplift"]["high"]
    assert -1 <= low < 0.25 < high, by_arm["a"]  # 0.5 / 0.4 - 1 = +25% lies inside a wide interval
    assert 0.5 < by_arm["a"]["probability_better"] < 0.9 and by_arm["b"]["probability_better"] < 0.2
    revenue = comparison["metrics"]["revenue_per_user"]
    assert revenue["status"] == "measured" and revenue["holdout"] == 10.0
    assert {r["id"]: r["value"] for r in revenue["variations"]} == {"a": 12.5, "b": 0.0}

    # The same figures from a raw edge (users of a partial hour) and from the raw tables alone.
    assert _report(store, cid, EDGES)["holdout_comparison"] == comparison
    assert _report(store, cid, WHOLE_HOURS, raw=True) == body

    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
                      params={"from": WHOLE_HOURS[0].isoformat(), "to": WHOLE_HOURS[1].isoformat(), "format": "csv"})  # fmt: skip
    csv_rows = {(x["section"], x["variation"]): x for x in csv.DictReader(io.StringIO(r.content.decode("utf-8-sig")))}
    hold_row = csv_rows[("variation", "hold")]
    assert (hold_row["enrolled_buyers"], hold_row["enrolled_conversion_rate"], hold_row["enrolled_revenue"]) == (
        "2", "0.4", "50.0",
    )  # fmt: skip
    assert float(csv_rows[("variation", "a")]["conversion_uplift_vs_holdout_low"]) == low
    assert csv_rows[("channel", "a")]["enrolled_buyers"] == ""
    page = await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt,
                         params={"from": WHOLE_HOURS[0].isoformat(), "to": WHOLE_HOURS[1].isoformat()})  # fmt: skip
    holdout_part = page.text.split("<h2>Holdout comparison</h2>", 1)[1].split("<figure>", 1)[0]
    assert "Holdout <small>(holdout)</small>" in holdout_part and "40.00%" in holdout_part and "50.00%" in holdout_part
    assert "Purchases (click-attributed)" in page.text

    # At the real thresholds (100 users each, 10 buyers together) these 5 and 4 users claim nothing.
    monkeypatch.undo()
    small = _report(store, cid, WHOLE_HOURS)["holdout_comparison"]
    assert small["status"] == "not_enough_data" and "5 users and 2 buyers" in small["reason"], small
    assert small["metrics"]["conversion_rate"]["holdout"] == 0.4
    rows = [r for m in small["metrics"].values() for r in m["variations"]]
    assert all(r["uplift"] is None and r["probability_better"] is None for r in rows), rows
    assert {r["id"]: r["value"] for r in small["metrics"]["revenue_per_user"]["variations"]} == {"a": 12.5, "b": 0.0}
    whole_hours = {"from": WHOLE_HOURS[0].isoformat(), "to": WHOLE_HOURS[1].isoformat()}
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params={**whole_hours, "format": "csv"})
    csv_rows = {(x["section"], x["variation"]): x for x in csv.DictReader(io.StringIO(r.content.decode("utf-8-sig")))}
    assert csv_rows[("variation", "a")]["conversion_uplift_vs_holdout_low"] == ""
    assert csv_rows[("variation", "a")]["enrolled_conversion_rate"] == "0.5"
    page = await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt, params=whole_hours)
    holdout_part = page.text.split("<h2>Holdout comparison</h2>", 1)[1].split("<figure>", 1)[0]
    assert "Not enough data to compare the arms with the holdout yet." in holdout_part
    assert "not enough data" in holdout_part and "50.00%" in holdout_part


async def test_an_uplift_over_a_holdout_that_cannot_be_measured_says_why(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """No holdout, or a holdout with no conversion yet: "not measurable" and the reason, never a figure."""
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)
    for variation in ("a", "b", "hold"):
        for _ in range(3):
            w.user(variation, h(1), control=variation == "hold")
    buyer = w.user("a", h(1))
    w.event(buyer, "purchase", h(2), 10.0)
    comparison = _report(store, cid, WHOLE_HOURS)["holdout_comparison"]
    assert comparison["status"] == "not_measurable" and "0 of 3 users" in comparison["reason"]
    assert all(r["uplift"] is None for m in comparison["metrics"].values() for r in m["variations"])
    page = await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt,
                         params={"from": WHOLE_HOURS[0].isoformat(), "to": WHOLE_HOURS[1].isoformat()})  # fmt: skip
    assert "Uplift vs holdout: not measurable: the holdout has no enrolled-user conversion yet" in page.text

    no_holdout = {**SPEC, "variations": [{**v, "share": 50} for v in SPEC["variations"][:2]]}
    cid = await create_campaign(api, section, no_holdout, activate=False)
    World(store, section.id, cid).user("a", h(1))
    comparison = _report(store, cid, WHOLE_HOURS)["holdout_comparison"]
    assert (comparison["holdout"], comparison["status"]) == (None, "not_measurable")
    assert "no holdout" in comparison["reason"]


async def test_an_ingested_purchase_of_an_anonymous_holdout_user_converts(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Through the API: a shopper held out by the campaign buys (no click, no CUID): the holdout's
    enrolled conversion; a repeat of the order counts once, and nothing is click-attributed."""
    cid = await create_campaign(api, section, holdout_campaign())
    dyid = new_dyid()
    await collect(api, section, dyid, add_to_cart("sku-1", 25.0))
    await collect(api, section, dyid, purchase([("sku-1", 25.0)], tx="order-1"))
    await collect(api, section, dyid, purchase([("sku-1", 25.0)], tx="order-1"))
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    whole_hours = {"from": (hour - timedelta(hours=2)).isoformat(), "to": (hour + timedelta(hours=2)).isoformat()}
    for params in ({}, whole_hours):  # the default range's users are a raw edge; whole hours: the counters
        body = (await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params=params)).json()
        [holdout] = [v for v in body["variations"] if v["control"]]
        assert (holdout["enrolled_conversions"]["purchases"], holdout["enrolled_conversions"]["revenue"]) == (1, 25.0)
        assert holdout["metrics"]["purchases"]["count"] == 0


def _random_plan(w: World, rng: random.Random, n: int) -> list[tuple[datetime, Callable[[], Any]]]:
    """Random allocations (re-triggers into another arm too), purchases of every arm's users (the
    holdout's included, anonymous ones, repeated transactions, before and long after enrollment),
    and sends, some failed and flagged possibly delivered."""
    acts: list[tuple[datetime, Callable[[], Any]]] = []
    for _ in range(n):
        var = rng.choice(["a", "b", "hold"])
        first = T0 + timedelta(minutes=rng.uniform(0, 2 * 24 * 60))
        uid = w.user(var, first, identified=rng.random() < 0.7, control=var == "hold")
        if rng.random() < 0.2:
            again = first + timedelta(hours=rng.uniform(1, 20))
            acts.append((again, lambda u=uid, v=rng.choice(["a", "b"]), t=again: w.retrigger(u, v, t)))
        if var != "hold":
            at = first + timedelta(minutes=rng.uniform(1, 600))
            status = rng.choice(["accepted", "failed"])
            maybe = status == "failed" and rng.random() < 0.5
            acts.append((at, lambda u=uid, v=var, t=at, x=status, m=maybe: _send(w, u, v, t, x, m)))
            if rng.random() < 0.5:
                click = at + timedelta(minutes=5)
                acts.append((click, lambda u=uid, v=var, t=click: w.hit(u, v, "click", t)))
        for _ in range(rng.randint(0, 3)):
            at = first + timedelta(minutes=rng.uniform(-60, 2 * 24 * 60))
            tx, value = rng.choice([None, "T1", "T2"]), round(rng.uniform(5, 200), 2)
            acts.append((at, lambda u=uid, a=at, v=value, x=tx: w.event(u, "purchase", a, v, x)))
    return acts


def _send(w: World, uid: str, variation: str, at: datetime, status: str, maybe: bool) -> None:
    key = w.send(uid, variation, 0, "email", at, status="in_flight")
    with w.store.session() as s:
        send = s.get(Send, key)
        assert send is not None
        previous, send.status, send.possible_duplicate = send.status, status, maybe
        report_rollup.count_send(s, send, previous)


def _full_view(store: Store, section_id: str, cid: str, span: tuple[datetime, datetime], raw: bool) -> dict[str, Any]:
    with store.session() as s:
        data = q.load_raw(s, section_id, cid, *span) if raw else q.load(s, section_id, cid, *span, WINDOW)
        agg = aggregate(data, WINDOW)
    return {**_view(agg), "sends_by_hour": agg.sends_by_hour,
            "revenue_by_hour": {k: round(v, 6) for k, v in agg.revenue_by_hour.items()}}  # fmt: skip


def _compare(store: Store, section_id: str, cid: str) -> dict[str, Any]:
    spans = [(h(-1), h(24 * 5)), (h(0.4), h(30.6)), (h(7.5), h(7.75)), (h(12), h(36))]
    for span in spans:
        fast, raw = _full_view(store, section_id, cid, span, False), _full_view(store, section_id, cid, span, True)
        assert fast == raw, span
    full = _full_view(store, section_id, cid, spans[0], False)
    return full


async def test_enrolled_conversions_of_counters_equal_the_raw_recompute(
    api: httpx.AsyncClient, store: Store, section: SectionKeys, settings: Settings,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Random data through the write paths: counters + edges == raw, also after identity merges, a
    rebuild, the start-up migration of a database from before the new counters and the CLI rebuild."""
    conversion = report_tables.ReportConversion
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)
    for _, write in sorted(_random_plan(w, random.Random(5), 60), key=lambda a: a[0]):
        write()
    full = _compare(store, section.id, cid)
    enrolled = {v: b[0]["enrolled_conversions"] for v, b in full["variations"].items()}
    assert enrolled["hold"]["buyers"] > 3 and enrolled["a"]["buyers"] > 3, enrolled
    assert sum(b[0]["metrics"]["possibly_delivered"]["count"] for b in full["variations"].values()) > 0
    with store.session() as s:  # identity merges: the merged person's conversions follow
        buyers = sorted(s.execute(select(conversion.user_id).distinct()).scalars())
        for merged, into in ((buyers[0], buyers[1]), (buyers[2], buyers[3])):
            users.merge_users(s, merged=s.get(User, merged), into=s.get(User, into), now=h(24 * 20))  # type: ignore[arg-type]
    merged_view = _compare(store, section.id, cid)
    with store.session() as s:
        assert report_rollup.rebuild(s, [cid]) == 1
    assert _compare(store, section.id, cid) == merged_view
    with store.session() as s:  # a database from before: no conversions, no new counters, no marker
        s.execute(delete(conversion))
        new_metrics = ("maybe_delivered", "sends_hour", "migrated_enroll")
        s.execute(delete(ReportRollup).where(col(ReportRollup.metric).in_(new_metrics)))
    missing = _full_view(store, section.id, cid, (h(-1), h(24 * 5)), raw=False)
    assert missing["sends_by_hour"] == {} and missing != merged_view  # the figures are missing
    with store.session() as s:
        assert report_rollup.migrate_reports(s) >= 1
    assert _compare(store, section.id, cid) == merged_view
    with store.session() as s:  # a rolling upgrade's older process wrote none: the CLI rebuild adds them
        s.execute(delete(conversion).where(col(conversion.campaign_id) == cid))
    monkeypatch.setenv("REJOIN_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("REJOIN_DATA_DIR", str(settings.data_dir))
    cli_main(["rebuild-reports", cid])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["campaigns_rebuilt"] == 1
    assert _compare(store, section.id, cid) == merged_view
