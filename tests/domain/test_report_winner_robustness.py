"""Report maths stays finite and meaningful on odd data: more converters than users in an arm (users
count by first journey, conversions by later journeys), a baseline with a mean of 0, float noise in
money sums."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from domain.reports import (
    Arm,
    Bucket,
    Click,
    HitGroup,
    ReportInput,
    SiteEvent,
    aggregate,
    arms_for,
    beta_prob_b_beats_a,
    winner,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
WINDOW = timedelta(days=7)


def _strict_json(value: object) -> str:
    """What the API does with the report: JSON without NaN/Infinity (else a 500)."""
    return json.dumps(value, allow_nan=False)


@pytest.mark.parametrize("counts", [(5, 5, 3, -2), (3, -1, 4, -4), (-1, 0, 0, -7), (0, -3, 0, 0)])
def test_exact_probability_is_a_probability_even_with_negative_failures(counts: tuple[int, int, int, int]) -> None:
    """Failures < 0 (more converters than users) took the log of a negative number: NaN."""
    p = beta_prob_b_beats_a(*counts)
    assert math.isfinite(p) and 0.0 <= p <= 1.0


def test_arms_clamp_converters_to_the_users_of_the_arm() -> None:
    """An arm whose converters outnumber its users gets a rate of at most 1."""
    b = Bucket(users=2)
    b.converters["clicks"], b.converters["revenue"] = 5, 4
    assert arms_for("clicks", {"b": b}, ["b"]) == [Arm("b", 2, 2, 2)]
    assert arms_for("revenue", {"b": b}, ["b"])[0].successes == 2


@pytest.mark.parametrize("metric", ["clicks", "purchases", "ctr"])
def test_winner_with_more_converters_than_users_is_finite(metric: str) -> None:
    """Two and three arms (exact value and simulation) with impossible counts: finite, valid JSON."""
    for arms in ([Arm("a", 10, 5, 10), Arm("b", 1, 3, 1)], [Arm("a", 0, 2, 0), Arm("b", 3, 9, 3), Arm("c", 5, 1, 5)]):
        result = winner(metric, arms, baseline="a")
        _strict_json(result)
        assert sum(r["probability_to_be_best"] for r in result["variations"]) == pytest.approx(1.0, abs=1e-3)


def test_report_input_with_a_variation_clicked_by_users_of_another_gives_a_finite_winner() -> None:
    """The API path: users by first journey ("a"), clicks under the later journey's variation ("b")."""
    inp = ReportInput(
        users={"a": 3, "b": 1},
        hits=[HitGroup("b", "email", 0, "click", 3), HitGroup("a", "email", 0, "click", 1)],
        click_users={"a": 1, "b": 3},
    )
    agg = aggregate(inp, WINDOW)
    result = winner("clicks", arms_for("clicks", agg.variations, ["a", "b"]), baseline="a")
    _strict_json(result)
    assert all(math.isfinite(r["probability_to_be_best"]) for r in result["variations"])


def test_no_uplift_interval_when_the_baseline_has_no_revenue() -> None:
    """Every arm at 0 revenue: the uplift would be a ratio of draws around 0 (-1509%..+1108%)."""
    zero = [Arm(v, 500, 0, 500) for v in "abc"]
    result = winner("revenue", zero, baseline="a")
    assert [r["uplift_vs_baseline"] for r in result["variations"]] == [None, None, None]
    only_b = [Arm("a", 500, 0, 500), Arm("b", 500, 3, 500, total=300.0, total_sq=30_000.0)]
    assert winner("revenue", only_b, baseline="a")["variations"][1]["uplift_vs_baseline"] is None


def test_no_uplift_interval_when_the_baseline_has_no_conversion() -> None:
    """A baseline rate of 0 (or no trials at all, CTR without impressions): no relative uplift."""
    no_rate = winner("purchases", [Arm("a", 500, 0, 500), Arm("b", 500, 7, 500)])
    assert no_rate["variations"][1]["uplift_vs_baseline"] is None
    no_impression = winner("ctr", [Arm("a", 500, 0, 0), Arm("b", 500, 7, 90)])
    assert no_impression["variations"][1]["uplift_vs_baseline"] is None
    kept = winner("purchases", [Arm("a", 500, 5, 500), Arm("b", 500, 7, 500)])["variations"][1]["uplift_vs_baseline"]
    assert kept is not None and kept["low"] < kept["high"]


def test_revenue_by_day_is_rounded_to_the_cent() -> None:
    """0.1 (counted in SQL) + 0.2 (attributed here) on one day is 0.3, not 0.30000000000000004."""
    click = Click("u", "a", 0, "email", T0)
    inp = ReportInput(
        users={"a": 1},
        clicks=[click],
        events=[SiteEvent("p", "u", "purchase", T0 + timedelta(hours=1), 0.2)],
        revenue_by_day={"2026-03-01": 0.1, "2026-03-02": 98389.26000000001},
    )
    assert aggregate(inp, WINDOW).revenue_by_day == {"2026-03-01": 0.3, "2026-03-02": 98389.26}


def test_a_revenue_uplift_interval_never_goes_below_minus_100_percent() -> None:
    """Few buyers with big orders make a wide posterior; revenue per user is never negative, so no
    uplift bound is below -100% (the trial's report showed -141%)."""
    base = Arm("a", 120, 12, 120, total=1200.0, total_sq=12 * 100.0**2)
    rare = Arm("b", 64, 1, 64, total=900.0, total_sq=900.0**2)  # one big order
    result = winner("revenue", [base, rare], baseline="a")
    interval = result["variations"][1]["uplift_vs_baseline"]
    assert interval["low"] >= -1.0 and interval["high"] > interval["low"], result
