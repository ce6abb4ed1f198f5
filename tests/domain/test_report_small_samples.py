"""Report claims need data (docs/reports.md): the holdout comparison takes the winner's minimum
sample, tied revenue draws favour no arm, the HTML names variations, and money per user is the
same figure however the cohort's sums were added up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.routes.reports import to_csv, to_html
from domain import reports
from domain.reports import (
    MIN_CONVERSIONS,
    MIN_USERS,
    Arm,
    Bucket,
    Enrolled,
    arms_for,
    holdout_comparison,
    money,
    winner,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _bucket(users: int, buyers: int, revenue: float = 0.0, sumsq: float = 0.0) -> Bucket:
    enrolled = Enrolled(purchases=buyers, buyers=buyers, revenue=revenue, revenue_sumsq=sumsq,
                        revenue_by_currency={"EUR": revenue})  # fmt: skip
    return Bucket(users=users, enrolled=enrolled)


def _trial_buckets() -> dict[str, Bucket]:
    """The trial's narrow cohort: 12 holdout users with 3 buyers, 21 "Friendly" users with 4."""
    return {"hold": _bucket(12, 3, 150.0, 3 * 50.0**2), "a": _bucket(21, 4, 400.0, 4 * 100.0**2)}


def test_a_holdout_comparison_on_a_tiny_sample_claims_nothing() -> None:
    """12 vs 21 users: no probability, no interval, status not_enough_data; counts and rates stay."""
    result = holdout_comparison(_trial_buckets(), ["a"], "hold")
    assert result["status"] == "not_enough_data", result
    assert "100 users" in result["reason"] and "10 buyers" in result["reason"], result["reason"]
    assert result["thresholds"] == {"min_users": MIN_USERS, "min_conversions": MIN_CONVERSIONS}
    for name, metric in result["metrics"].items():
        assert metric["status"] == "not_enough_data", (name, metric)
        [row] = metric["variations"]
        assert row["status"] == "not_enough_data"
        assert row["probability_better"] is None and row["uplift"] is None, row
    conversion = result["metrics"]["conversion_rate"]
    assert conversion["holdout"] == 3 / 12 and conversion["variations"][0]["value"] == 4 / 21
    revenue = result["metrics"]["revenue_per_user"]
    assert revenue["holdout"] == 12.5 and revenue["variations"][0]["value"] == round(400 / 21, 6)


def test_the_holdout_comparison_is_measured_once_both_sides_have_the_winners_minimum() -> None:
    """Enough users on both sides and enough buyers together: measured; an arm below the minimum
    next to it is not enough data on its own row only."""
    buckets = {"hold": _bucket(MIN_USERS, 4, 200.0, 4 * 50.0**2), "a": _bucket(MIN_USERS, 6, 600.0, 6 * 100.0**2),
               "small": _bucket(MIN_USERS - 1, 30, 900.0, 30 * 30.0**2)}  # fmt: skip
    result = holdout_comparison(buckets, ["a", "small"], "hold")
    assert result["status"] == "measured" and result["reason"] is None
    for metric in result["metrics"].values():
        assert metric["status"] == "measured"
        rows = {r["id"]: r for r in metric["variations"]}
        assert rows["a"]["status"] == "measured" and rows["a"]["probability_better"] is not None
        assert rows["a"]["uplift"] is not None
        assert rows["small"]["status"] == "not_enough_data" and rows["small"]["probability_better"] is None
        assert rows["small"]["value"] is not None
    # Fewer buyers than the minimum over the holdout and the arm together: not enough data.
    few = {"hold": _bucket(500, 4, 200.0, 4 * 50.0**2), "a": _bucket(500, 5, 500.0, 5 * 100.0**2)}
    assert holdout_comparison(few, ["a"], "hold")["status"] == "not_enough_data"


def test_a_holdout_with_no_conversion_stays_not_measurable() -> None:
    result = holdout_comparison({"hold": _bucket(12, 0), "a": _bucket(21, 4, 10.0, 25.0)}, ["a"], "hold")
    assert result["status"] == "not_measurable" and "0 of 12 users" in result["reason"]


def test_html_shows_the_not_enough_data_caution_for_a_tiny_holdout() -> None:
    body = _body(holdout_comparison(_trial_buckets(), ["a"], "hold"))
    page = to_html(body)
    part = page.split("<h2>Holdout comparison</h2>", 1)[1].split("<figure>", 1)[0]
    assert "Not enough data to compare the arms with the holdout yet" in part, part
    assert "25.00%" in part and "19.05%" in part, "the raw rates stay"
    assert "%</td><td>not enough data" in part or "not enough data</td>" in part
    assert "97." not in part and "91." not in part
    csv_text = to_csv(body)
    assert "conversion_uplift_vs_holdout_low" in csv_text


def test_zero_revenue_everywhere_names_no_leader() -> None:
    """No revenue at all: every draw is a tie at 0, split evenly; no arm leads."""
    for ids in ("ab", "abc"):
        result = winner("revenue", [Arm(v, 40, 0, 40, total=0.0, total_sq=0.0) for v in ids], baseline="a")
        probs = [r["probability_to_be_best"] for r in result["variations"]]
        assert probs == [round(1 / len(ids), 4)] * len(ids), result
        assert result["leader"] is None and result["winner"] is None, result


def test_tied_revenue_draws_are_split_not_given_to_the_first_arm() -> None:
    """An arm without revenue (0 in every draw) against one whose draws are clipped at 0 in some of
    them: those ties are shared, whichever arm comes first."""
    zero = Arm("z", 200, 0, 200, total=0.0, total_sq=0.0)
    # 1 buyer of 200 at 10.0: mean 0.05, se 0.05: clipped to 0 in P(Z < -1) = 15.9% of the draws.
    some = Arm("s", 200, 1, 200, total=10.0, total_sq=100.0)
    first = {r["id"]: r["probability_to_be_best"] for r in winner("revenue", [zero, some])["variations"]}
    second = {r["id"]: r["probability_to_be_best"] for r in winner("revenue", [some, zero])["variations"]}
    assert first["z"] == pytest.approx(0.0793, abs=0.01) and second["z"] == pytest.approx(0.0793, abs=0.01)
    assert first["s"] + first["z"] == pytest.approx(1.0)


def test_revenue_probability_better_than_the_holdout_splits_ties() -> None:
    """An arm whose buyers bought in another currency (0 revenue) against a holdout whose revenue
    per user is clipped to 0 in 15.9% of the draws: half of those ties, not none."""
    buckets = {"hold": _bucket(MIN_USERS, 1, 10.0, 100.0), "a": _bucket(MIN_USERS, MIN_CONVERSIONS, 0.0, 0.0)}
    result = holdout_comparison(buckets, ["a"], "hold")
    row = result["metrics"]["revenue_per_user"]["variations"][0]
    assert row["status"] == "measured" and row["probability_better"] == pytest.approx(0.0793, abs=0.01), row
    equal = {"hold": _bucket(MIN_USERS, 10, 0.0, 0.0), "a": _bucket(MIN_USERS, 10, 0.0, 0.0)}
    assert holdout_comparison(equal, ["a"], "hold")["metrics"]["revenue_per_user"]["status"] == "not_measurable"


def test_html_winner_table_and_verdict_name_the_variations() -> None:
    body = _body(holdout_comparison(_trial_buckets(), ["a"], "hold"))
    rows = [{"id": vid, "probability_to_be_best": p, "uplift_vs_baseline": None}
            for vid, p in (("a", 0.01), ("b", 0.99), ("gone", 0.0))]  # fmt: skip
    body["winner"] = {"metric": "purchases", "baseline": "a", "status": "winner", "winner": "b", "leader": "b",
                      "variations": rows}  # fmt: skip
    page = to_html(body)
    part = page.split("<h2>Winner</h2>", 1)[1].split("<h2>Holdout comparison</h2>", 1)[0]
    assert "Winner: <b>Bold</b>" in part
    assert "<td>Friendly</td>" in part and "<td>Bold</td>" in part and "<td>gone</td>" in part, part
    assert "<td>a</td>" not in part and "<td>b</td>" not in part
    assert "so its are" not in page


def test_html_channel_and_step_tables_name_the_variations() -> None:
    body = _body(holdout_comparison(_trial_buckets(), ["a"], "hold"))
    row: dict[str, Any] = {"users": 21, "ctr": None, "metrics": {}}
    body["channels"] = [row | {"variation_id": "a", "channel": "email"}, row | {"variation_id": "gone", "channel": "sms"}]
    body["steps"] = [row | {"variation_id": "a", "step_index": 0, "step_name": "First"}]
    page = to_html(body)
    channels = page.split("<h2>Channel performance</h2>", 1)[1].split("<h2>Steps</h2>", 1)[0]
    steps = page.split("<h2>Steps</h2>", 1)[1]
    assert "<td>Friendly</td><td>email</td>" in channels and "<td>gone</td><td>sms</td>" in channels, channels
    assert "<td>Friendly</td><td>First</td>" in steps, steps


def test_money_per_user_does_not_depend_on_the_order_of_the_sum() -> None:
    """The trial's cohort read two ways: 70.15588709677418 vs 70.1558870967742. Both sums are the
    same amount to the cent, so every figure derived from them is the same."""
    values = [23.3, 10.53, 167.97, 89.39, 153.64, 5.41, 91.85, 145.7]
    forward, backward = sum(values), sum(reversed(values))
    assert forward / 124 != backward / 124  # the float noise the trial saw (687.79 vs 687.7899999999998)
    users = 124
    def counts(total: float) -> dict[str, float]:
        return {**dict.fromkeys(reports.METRICS, 0.0), "revenue": total}

    def enrolled(total: float) -> Enrolled:
        return Enrolled(buyers=30, purchases=30, revenue=total)

    tables = [Bucket(users=users, counts=counts(t), enrolled=enrolled(t)).table() for t in (forward, backward)]
    assert tables[0] == tables[1]
    assert tables[0]["enrolled_conversions"]["revenue_per_user"] == round(reports.money(forward) / users, 6)
    arms = [arms_for("revenue", {"a": Bucket(users=users, counts=counts(t))}, ["a"])[0] for t in (forward, backward)]
    assert arms[0] == arms[1]
    pairs = [{"h": _bucket(users, 30, t, 2.7e6), "a": _bucket(users, 30, 2 * t, 4e5)} for t in (forward, backward)]
    hold = [holdout_comparison(buckets, ["a"], "h") for buckets in pairs]
    assert hold[0] == hold[1]


def _body(comparison: dict[str, Any]) -> dict[str, Any]:
    """A report body around a holdout comparison (what the renderers read)."""
    empty: dict[str, Any] = {m: {"count": 0, "per_user": 0.0} for m in reports.METRICS}
    buckets = _trial_buckets()
    variations: list[dict[str, Any]] = []
    for vid, name in (("a", "Friendly"), ("b", "Bold"), ("hold", "Holdout")):
        b = buckets.get(vid) or Bucket(users=0, enrolled=Enrolled())
        variations.append({"id": vid, "name": name, "control": vid == "hold", "users": b.users, "metrics": empty,
                           "ctr": None, "buyers": 0, "conversion_rate": 0.0,
                           "enrolled_conversions": b.table()["enrolled_conversions"],
                           "revenue_by_currency": {}, "revenue_other_currencies": {}})  # fmt: skip
    totals = dict.fromkeys(reports.METRICS, 0)
    return {
        "campaign": {"id": "c", "name": "Trial", "status": "active", "primary_metric": "purchases",
                     "attribution_window_hours": 24.0},  # fmt: skip
        "range": {"from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat()},
        "totals": {"users_triggered": 33, **totals, "ctr": None, "revenue_by_currency": {},
                   "revenue_other_currencies": {}, "enrolled_conversions": {}},  # fmt: skip
        "revenue_currency": None,
        "variations": variations,
        "channels": [],
        "steps": [],
        "winner": winner("purchases", [Arm("a", 21, 0, 21), Arm("b", 0, 0, 0)], baseline="a"),
        "holdout_comparison": comparison,
        "series": {"time_zone": "UTC", "sends_by_day": {}, "revenue_by_day": {}},
        "warnings": [],
    }


def test_the_per_variation_chart_is_not_under_the_holdout_heading_and_says_click_attributed() -> None:
    """The chart of the primary metric per user sat under "Holdout comparison" with no caption saying
    it counts click-attributed revenue: 0.000 beside the holdout table's 0.67 (a trial's reading)."""
    body = _body(holdout_comparison(_trial_buckets(), ["a"], "hold"))
    body["campaign"]["primary_metric"] = "revenue"
    page = to_html(body)
    holdout = page.split("<h2>Holdout comparison</h2>", 1)[1].split("<h2>", 1)[0]
    assert "per user by variation" not in holdout
    assert "Revenue (click-attributed) per user by variation" in page


def test_half_a_cent_rounds_the_same_whatever_order_the_sum_was_made_in() -> None:
    """A report trial: five purchases of 33.333 made variation a's revenue 1440.595 over the default
    range and 1440.5949999999998 over whole hours; `round(x, 2)` read them 1440.6 and 1440.59."""
    assert money(1440.595) == money(1440.5949999999998) == money(1440.5950000000003) == 1440.6
    assert money(-2.005) == -2.01 and money(22315.120000000003) == 22315.12 and str(money(-0.001)) == "0.0"
    assert money(0.125) == 0.13  # half up, not to even (banker's rounding gave 0.12)
