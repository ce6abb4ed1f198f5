"""Enrolled-user conversions follow the click-attributed revenue's currency rule (docs/reports.md,
"Revenue and currencies" and "Holdout comparison").

A trial found an arm's enrolled revenue adding 1454.5 USD and 70 EUR into 1524.5 with no warning,
and the holdout comparison's revenue per user computed on that sum. Now, with no report currency
set, `enrolled_conversions` shows `revenue_by_currency`, the `mixed_currencies` warning names the
enrolled figure, and revenue per user is not compared with the holdout (no figure, a reason);
with one set, other currencies are kept apart (`revenue_other_currencies`) and revenue is
compared in that currency. Counters, raw edges, the raw reference and a rebuild agree.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from store import report_rollup
from store.engine import Store
from store.report_tables import ReportConversion
from tests.api.test_report_currencies import purchase
from tests.api.test_report_holdout_comparison import EDGES, SPEC, WHOLE_HOURS, _report, few_users_measured, h
from tests.helpers import SectionKeys, create_campaign
from tests.reports_world import World

RANGE = {"from": WHOLE_HOURS[0].isoformat(), "to": WHOLE_HOURS[1].isoformat()}
# A few users per arm: compared with the holdout below the real minimum sample (see the fixture).
pytestmark = pytest.mark.usefixtures(few_users_measured.__name__)


def _world(store: Store, section_id: str, cid: str) -> None:
    """Holdout: 3 users, 50 USD of purchases; A: 4 users, one clicked and bought 100 USD (the only
    click-attributed purchase), one (a later cohort hour) bought 70 EUR unclicked, one 5 with no
    currency; B: 2 users, 40 USD unclicked."""
    w = World(store, section_id, cid)
    hold = [w.user("hold", h(0.5), control=True) for _ in range(3)]
    purchase(w, hold[0], h(2), 30.0, "USD")
    purchase(w, hold[1], h(3), 20.0, "USD")
    arm_a = [w.user("a", h(0.5)), w.user("a", h(1.5)), w.user("a", h(0.5)), w.user("a", h(0.5))]
    w.send(arm_a[0], "a", 0, "email", h(1))
    w.hit(arm_a[0], "a", "click", h(1.2))
    purchase(w, arm_a[0], h(2), 100.0, "USD")
    purchase(w, arm_a[1], h(5), 70.0, "EUR")
    purchase(w, arm_a[2], h(6), 5.0, None)
    arm_b = [w.user("b", h(0.5)) for _ in range(2)]
    purchase(w, arm_b[0], h(4), 40.0, "USD")


def _same_on_every_path(store: Store, cid: str) -> dict[str, Any]:
    """The report from the counters; the raw reference gives the same, and so do the raw edges
    (their holdout comparison and enrolled figures) and the counters after a rebuild."""
    body = _report(store, cid, WHOLE_HOURS)
    assert _report(store, cid, WHOLE_HOURS, raw=True) == body
    edged = _report(store, cid, EDGES)
    assert edged["holdout_comparison"] == body["holdout_comparison"]
    assert [v["enrolled_conversions"] for v in edged["variations"]] == [
        v["enrolled_conversions"] for v in body["variations"]
    ]
    with store.session() as s:  # the rows are built again from the raw events, currency included
        s.execute(delete(ReportConversion).where(ReportConversion.campaign_id == cid))  # type: ignore[arg-type]
        assert report_rollup.rebuild(s, [cid]) == 1
    assert _report(store, cid, WHOLE_HOURS) == body
    return body


def _enrolled(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["id"]: v["enrolled_conversions"] for v in body["variations"]}


async def test_enrolled_revenue_in_mixed_currencies_is_split_and_never_compared_with_the_holdout(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await create_campaign(api, section, SPEC, activate=False)
    _world(store, section.id, cid)
    body = _same_on_every_path(store, cid)

    enrolled = _enrolled(body)
    assert enrolled["a"]["revenue_by_currency"] == {"EUR": 70.0, "USD": 100.0, "none": 5.0}
    assert enrolled["a"]["revenue"] == 175.0, "no currency set: the full sum, as click-attributed revenue"
    assert enrolled["a"]["revenue_other_currencies"] == {}
    assert enrolled["hold"]["revenue_by_currency"] == {"USD": 50.0}
    totals = body["totals"]["enrolled_conversions"]
    assert totals["revenue_by_currency"] == {"EUR": 70.0, "USD": 190.0, "none": 5.0}
    assert totals["revenue_other_currencies"] == {}
    # Click-attributed revenue is in USD only; the enrolled revenue mixes: the warning says so.
    assert body["totals"]["revenue_by_currency"] == {"USD": 100.0}
    [warning] = body["warnings"]
    assert (warning["code"], warning["currencies"], warning["figures"]) == (
        "mixed_currencies", ["EUR", "USD"], ["enrolled_conversions.revenue"],
    )  # fmt: skip

    comparison = body["holdout_comparison"]
    assert comparison["status"] == "measured"
    assert comparison["metrics"]["conversion_rate"]["status"] == "measured", "conversions have no currency"
    revenue = comparison["metrics"]["revenue_per_user"]
    assert revenue["status"] == "not_measurable" and "EUR, USD" in revenue["reason"]
    assert revenue["holdout"] is None
    assert all(r["value"] is None and r["uplift"] is None for r in revenue["variations"]), revenue

    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params={**RANGE, "format": "csv"})
    rows = {(x["section"], x["variation"]): x for x in csv.DictReader(io.StringIO(r.content.decode("utf-8-sig")))}
    a_row = rows[("variation", "a")]
    assert a_row["enrolled_revenue_by_currency"] == "EUR 70.00; USD 100.00; none 5.00"
    assert (a_row["revenue_uplift_vs_holdout_low"], a_row["enrolled_revenue_other_currencies"]) == ("", "")
    assert a_row["conversion_uplift_vs_holdout_low"] != ""
    assert rows[("channel", "a")]["enrolled_revenue_by_currency"] == ""
    page = (await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt, params=RANGE)).text
    holdout_part = page.split("<h2>Holdout comparison</h2>", 1)[1].split("<figure>", 1)[0]
    assert "Revenue per user: not measurable: the enrolled users&#x27; revenue is in EUR, USD" in holdout_part
    assert "Enrolled-user revenue by currency: EUR 70.00; USD 190.00; none 5.00" in holdout_part
    assert "43.75" not in holdout_part, "A's mixed revenue per user (175 / 4) is no figure of the comparison"
    assert "enrolled-user revenue adds up values in EUR, USD" in page


async def test_a_report_currency_keeps_other_currencies_out_of_enrolled_revenue(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await create_campaign(api, section, SPEC, activate=False)
    _world(store, section.id, cid)
    r = await api.patch("/api/v1/section", json={"currency": "USD"}, headers=section.mgmt)
    assert r.status_code == 200, r.text
    body = _same_on_every_path(store, cid)

    a = _enrolled(body)["a"]
    assert (a["purchases"], a["buyers"]) == (3, 3), "a purchase in another currency still converts"
    assert a["revenue"] == 105.0, "USD and the purchase without a currency, as click-attributed revenue"
    assert a["revenue_by_currency"] == {"USD": 100.0, "none": 5.0}
    assert a["revenue_other_currencies"] == {"EUR": 70.0}
    assert body["totals"]["enrolled_conversions"]["revenue_other_currencies"] == {"EUR": 70.0}
    assert body["warnings"] == []

    revenue = body["holdout_comparison"]["metrics"]["revenue_per_user"]
    assert revenue["status"] == "measured" and revenue["holdout"] == 16.666667  # 50 / 3, to 6 decimals
    by_arm = {row["id"]: row for row in revenue["variations"]}
    assert (by_arm["a"]["value"], by_arm["b"]["value"]) == (105.0 / 4, 40.0 / 2)
    assert by_arm["a"]["uplift"] is not None and by_arm["a"]["probability_better"] is not None

    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params={**RANGE, "format": "csv"})
    rows = {(x["section"], x["variation"]): x for x in csv.DictReader(io.StringIO(r.content.decode("utf-8-sig")))}
    assert rows[("variation", "a")]["enrolled_revenue_other_currencies"] == "EUR 70.00"
    assert rows[("variation", "a")]["revenue_uplift_vs_holdout_low"] != ""
    page = (await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt, params=RANGE)).text
    assert "Enrolled-user revenue by currency: EUR 70.00 (not in revenue)" in page
