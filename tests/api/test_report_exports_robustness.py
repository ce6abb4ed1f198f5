"""Report exports on odd data: never a 500 or "nan" (an arm with more converters than users), money
to the cent in totals and series, a CSV Excel opens as UTF-8 and cannot run formulas, and chart bars
keyed by variation id (two variations may share a name)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api.routes.reports import finite_only, safe_cell, to_csv, to_html
from store.engine import Store
from tests.helpers import SectionKeys, create_campaign, step
from tests.reports_world import World

T0 = datetime(2026, 4, 6, tzinfo=UTC)
RANGE = {"from": T0.isoformat(), "to": (T0 + timedelta(days=3)).isoformat()}


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def spec(metric: str) -> dict[str, Any]:
    return {"name": "Café report", "type": "cart_abandonment", "channel_priority": ["email"],
            "settings": {"primary_metric": metric, "attribution_window": "P1D"},
            "variations": [{"id": "a", "name": "Café", "share": 45, "steps": [step("S1")]},
                           {"id": "b", "name": "Café", "share": 45, "steps": [step("S1")]},
                           {"id": "hold", "name": " =1+1", "share": 10, "control": True}]}  # fmt: skip


async def _get(api: httpx.AsyncClient, section: SectionKeys, cid: str, path: str, **params: str) -> httpx.Response:
    r = await api.get(f"/api/v1/campaigns/{cid}/{path}", headers=section.mgmt, params={**RANGE, **params})
    assert r.status_code == 200, r.text
    return r


async def test_more_converters_than_users_never_breaks_the_report(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Users of "a" whose later journeys' clicks count under "b" (which has no user of its own): the
    exact P(B > A) took the log of failures = -2, and the report was a 500 / "nan%"."""
    cid = await create_campaign(api, section, spec("clicks"), activate=False)
    w = World(store, section.id, cid)
    for _ in range(2):
        uid = w.user("a", h(1))
        w.send(uid, "b", 0, "email", h(2))
        w.hit(uid, "b", "click", h(3))
    body = (await _get(api, section, cid, "report")).json()
    assert {r["id"]: r["probability_to_be_best"] for r in body["winner"]["variations"]}.keys() == {"a", "b"}
    json.dumps(body, allow_nan=False)
    page = (await _get(api, section, cid, "report.html")).text
    assert "nan" not in page.lower() and "inf%" not in page.lower()
    csv_text = (await _get(api, section, cid, "report", format="csv")).content.decode("utf-8-sig")
    assert "nan" not in csv_text.lower()


async def _two_buyers(api: httpx.AsyncClient, store: Store, section: SectionKeys) -> str:
    """A buys for 0.1 and B for 0.2 on one day (0.1 + 0.2 = 0.30000000000000004); A and B are both "Café"."""
    cid = await create_campaign(api, section, spec("revenue"), activate=False)
    w = World(store, section.id, cid)
    for variation, value in (("a", 0.1), ("b", 0.2)):
        uid = w.user(variation, h(1))
        w.send(uid, variation, 0, "email", h(2))
        w.hit(uid, variation, "click", h(3))
        w.event(uid, "purchase", h(4), value)
    w.user("hold", h(1), control=True)
    return cid


async def test_money_totals_and_revenue_by_day_are_rounded_to_the_cent(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    body = (await _get(api, section, await _two_buyers(api, store, section), "report")).json()
    assert body["totals"]["revenue"] == 0.3
    assert body["series"]["revenue_by_day"] == {"2026-04-06": 0.3}


async def test_csv_has_a_utf8_bom_and_quotes_blank_led_formulas(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    raw = (await _get(api, section, await _two_buyers(api, store, section), "report", format="csv")).content
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel reads "Café", not "CafÃ©"
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert {r["variation_name"] for r in rows if r["section"] == "variation"} == {"Café", "' =1+1"}


async def test_the_per_user_chart_has_one_bar_per_variation_id(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Two variations named "Café" collapsed into one bar when the chart was keyed by name."""
    page = (await _get(api, section, await _two_buyers(api, store, section), "report.html")).text
    chart = page.split("per user by variation", 1)[1].split("</figure>", 1)[0]
    assert len(re.findall(r"<rect ", chart)) == 3  # a, b (both "Café") and the holdout
    assert chart.count("<title>Café: ") == 2


@pytest.mark.parametrize(
    ("cell", "neutralised"),
    [(" =1+1", True), ("  @SUM(A1)", True), ("\u00a0-2+3", True), ("\t=1", True), ("\rx", True), ("+1", True),
     ("\n=1", True), ("Café", False), ("a=b", False), ("", False), (-5, False), (1.5, False)],
)  # fmt: skip
def test_formula_injection_catches_cells_led_by_blanks(cell: object, neutralised: bool) -> None:
    """Spreadsheets skip leading blanks: " =1+1" runs as a formula, so it is quoted like "=1+1"."""
    assert safe_cell(cell) == (("'" + cell) if neutralised and isinstance(cell, str) else cell)


def test_a_non_finite_figure_costs_a_cell_not_the_report() -> None:
    """The last guard: NaN/inf anywhere in a report body become null, and CSV and HTML still render."""
    nan, inf = math.nan, math.inf
    metrics = {m: {"count": nan, "per_user": inf} for m in ("send_requests", "failed_sends", "provider_opt_outs",
                                                          "impressions", "clicks", "purchases", "revenue",
                                                          "add_to_carts")}  # fmt: skip
    row = {"users": 1, "ctr": nan, "metrics": metrics}
    body = finite_only({
        "campaign": {"id": "c", "name": "N", "status": "active", "primary_metric": "revenue",
                     "attribution_window_hours": inf},
        "range": {"from": "x", "to": "y"},
        "totals": {"users_triggered": 1, **{m: nan for m in metrics}, "ctr": inf},
        "variations": [{"id": "a", "name": "A", "control": False, **row}],
        "channels": [{"variation_id": "a", "channel": "email", **row}],
        "steps": [{"variation_id": "a", "step_index": 0, "step_name": "S1", **row}],
        "winner": {"metric": "revenue", "baseline": "a", "status": "no_winner_yet", "winner": None, "leader": "a",
                   "variations": [{"id": "a", "probability_to_be_best": nan, "uplift_vs_baseline": None},
                                  {"id": "b", "probability_to_be_best": inf,
                                   "uplift_vs_baseline": {"low": nan, "high": -inf}}]},
        "series": {"sends_by_day": {"2026-04-06": 1}, "revenue_by_day": {"2026-04-06": nan}},
    })  # fmt: skip
    json.dumps(body, allow_nan=False)
    for text in (to_csv(body), to_html(body)):
        assert "nan" not in text.lower() and "inf" not in text.lower()
