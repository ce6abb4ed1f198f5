"""Report maths: attribution edge cases, normalization, channel counting, the Bayesian winner."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from domain.reports import (
    Arm,
    Bucket,
    Click,
    HitGroup,
    ReportInput,
    SendGroup,
    SiteEvent,
    aggregate,
    arms_for,
    attribute,
    beta_prob_b_beats_a,
    winner,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
WINDOW = timedelta(days=7)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def click(user: str, at: datetime, step: int = 0, channel: str = "email", var: str = "a") -> Click:
    return Click(user, var, step, channel, at)


def buy(eid: str, user: str, at: datetime, value: float = 10.0, tx: str | None = None, identified: bool = True) -> SiteEvent:
    return SiteEvent(eid, user, "purchase", at, value, tx, identified)


def test_purchase_before_click_is_not_attributed() -> None:
    """Attribution starts at the click: an earlier purchase counts for nothing."""
    assert attribute([click("u", h(5))], [buy("p", "u", h(4))], WINDOW) == []


def test_purchase_after_window_is_not_attributed() -> None:
    """A purchase after the window closed is not attributed; one just inside is."""
    got = attribute([click("u", h(0))], [buy("late", "u", h(0) + WINDOW + timedelta(seconds=1)), buy("ok", "u", h(0) + WINDOW)], WINDOW)
    assert [a.event.id for a in got] == ["ok"]


def test_two_clicks_attribute_once_to_the_last_click() -> None:
    """With two earlier clicks the purchase goes to the later one, once."""
    got = attribute([click("u", h(1), step=0), click("u", h(30), step=1, channel="sms")], [buy("p", "u", h(40))], WINDOW)
    assert len(got) == 1 and (got[0].click.step_index, got[0].click.channel) == (1, "sms")


def test_unidentified_or_duplicate_purchases_are_not_attributed_twice() -> None:
    """Unidentified purchases are skipped; a resent transaction id is attributed once."""
    events = [buy("p1", "u", h(2), tx="T1"), buy("p2", "u", h(3), tx="T1"), buy("p3", "u", h(4), identified=False)]
    got = attribute([click("u", h(1))], events, WINDOW)
    assert [a.event.id for a in got] == ["p1"]
    assert attribute([click("u", h(1))], [buy("x", "other", h(2))], WINDOW) == []


def test_normalization_and_channel_vs_variation_counting() -> None:
    """Variation metrics divide by allocated users; channel and step metrics by users sent there."""
    inp = ReportInput(
        users={"a": 4, "ctl": 1},
        channel_users={("a", "email"): 2, ("a", "sms"): 1},
        step_users={("a", 0): 3, ("a", 1): 1},
        sends=[SendGroup("a", "email", 0, 2, "2026-03-01"), SendGroup("a", "sms", 0, 1, "2026-03-01"),
               SendGroup("a", "email", 1, 1, "2026-03-02")],
        hits=[HitGroup("a", "email", 0, "impression", 2), HitGroup("a", "email", 0, "click", 1),
              HitGroup("a", "sms", 0, "click", 1)],
        click_users={"a": 2},
        clicks=[click("u0", h(2)), click("u2", h(2), channel="sms")],
        events=[buy("p1", "u0", h(3), 30.0), buy("p2", "u2", h(3), 50.0)],
    )  # fmt: skip
    agg = aggregate(inp, WINDOW)
    a = agg.variations["a"].table()
    assert a["users"] == 4 and agg.variations["ctl"].table()["users"] == 1
    assert a["metrics"]["send_requests"] == {"count": 4, "per_user": 1.0}
    assert a["metrics"]["revenue"] == {"count": 80, "per_user": 20.0}
    assert a["metrics"]["purchases"]["per_user"] == 0.5
    assert a["ctr"] == 0.5  # email only: 1 click / 2 impressions (the SMS click is not in CTR)
    email, sms = agg.channels[("a", "email")].table(), agg.channels[("a", "sms")].table()
    assert email["users"] == 2 and email["metrics"]["revenue"] == {"count": 30, "per_user": 15.0}
    assert email["metrics"]["send_requests"]["count"] == 3
    assert sms["users"] == 1 and sms["metrics"]["revenue"]["per_user"] == 50.0 and sms["ctr"] is None
    assert agg.steps[("a", 1)].table()["users"] == 1
    assert agg.sends_by_day == {"2026-03-01": 3, "2026-03-02": 1}
    arms = arms_for("revenue", agg.variations, ["a"])
    assert arms == [Arm("a", 4, 2, 4, 80.0, 30.0**2 + 50.0**2)]
    assert arms_for("clicks", agg.variations, ["a"])[0].successes == 2


def test_exact_beta_probability_matches_hand_computation() -> None:
    """0/1 vs 1/1 with uniform priors: P(B > A) = integral of 2x*(2x - x^2) = 5/6."""
    assert beta_prob_b_beats_a(0, 1, 1, 0) == pytest.approx(5 / 6, abs=1e-12)
    assert beta_prob_b_beats_a(5, 5, 5, 5) == pytest.approx(0.5, abs=1e-9)


def test_winner_for_conversions_against_normal_approximation() -> None:
    """10% vs 15% of 1000 users: z = 0.05 / 0.01475 = 3.39, so P(B best) ~ 0.9997 -> winner B."""
    result = winner("purchases", [Arm("a", 1000, 100, 1000), Arm("b", 1000, 150, 1000)], baseline="a")
    assert result["status"] == "winner" and result["winner"] == "b"
    rows = {r["id"]: r for r in result["variations"]}
    assert rows["b"]["probability_to_be_best"] == pytest.approx(0.9997, abs=0.001)
    low, high = rows["b"]["uplift_vs_baseline"]["low"], rows["b"]["uplift_vs_baseline"]["high"]
    assert 0.15 < low < 0.5 < high < 0.9  # true uplift is +50%


def test_winner_for_revenue_uses_per_user_means() -> None:
    """Revenue means 1.0 vs 1.3 (sd 2, n 400 each): z = 0.3 / 0.1414 = 2.12, P ~ 0.983 -> winner."""
    # 200 users with 3.0 and 200 with -1.0 (a refund): mean 1.0, sd 2.0; B: 3.3 / -0.7, mean 1.3.
    a = Arm("a", 400, 200, 400, total=200 * 3.0 + 200 * -1.0, total_sq=200 * 9.0 + 200 * 1.0)
    b = Arm("b", 400, 200, 400, total=200 * 3.3 + 200 * -0.7, total_sq=200 * 3.3**2 + 200 * 0.7**2)
    result = winner("revenue", [a, b], baseline="a")
    rows = {r["id"]: r for r in result["variations"]}
    assert rows["b"]["probability_to_be_best"] == pytest.approx(0.983, abs=0.01)
    assert result["winner"] == "b"


def test_not_enough_data_is_reported_as_such() -> None:
    """Few users or few conversions: no winner, status says so."""
    result = winner("purchases", [Arm("a", 40, 1, 40), Arm("b", 40, 9, 40)])
    assert result["status"] == "not_enough_data" and result["winner"] is None and result["leader"] == "b"
    assert winner("purchases", [Arm("a", 1000, 0, 1000)])["status"] == "single_variation"


def test_arms_for_ctr_uses_email_clicks_over_impressions() -> None:
    """CTR arms come from email clicks and impressions."""
    b = Bucket(users=1, email_impressions=10, email_clicks=3)
    assert arms_for("ctr", {"a": b}, ["a"]) == [Arm("a", 1, 3, 10)]


def _miller_sum(a_succ: int, a_fail: int, b_succ: int, b_fail: int) -> float:
    """Evan Miller's sum term by term with log-gammas: the reference for the vectorised form."""
    alpha_a, beta_a, alpha_b, beta_b = a_succ + 1, a_fail + 1, b_succ + 1, b_fail + 1

    def lbeta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    terms = (
        lbeta(alpha_a + i, beta_a + beta_b) - math.log(beta_b + i) - lbeta(1 + i, beta_b) - lbeta(alpha_a, beta_a)
        for i in range(alpha_b)
    )
    return sum(math.exp(t) for t in terms)


@pytest.mark.parametrize("counts", [(0, 0, 0, 0), (3, 7, 0, 10), (100, 900, 150, 850), (2000, 8000, 2100, 7900)])
def test_exact_beta_probability_matches_the_term_by_term_sum(counts: tuple[int, int, int, int]) -> None:
    assert beta_prob_b_beats_a(*counts) == pytest.approx(_miller_sum(*counts), abs=1e-9)


def test_winner_is_deterministic_and_fair_between_equal_arms() -> None:
    """Seeded draws: the same arms give the same figures; three equal arms ~1/3 each."""
    arms = [Arm(v, 5000, 500, 5000) for v in "abc"]
    result = winner("purchases", arms, baseline="a")
    assert winner("purchases", arms, baseline="a") == result
    for row in result["variations"]:
        assert row["probability_to_be_best"] == pytest.approx(1 / 3, abs=0.015)  # 20,000 draws: sd 0.0033
    low, high = result["variations"][1]["uplift_vs_baseline"].values()
    assert -0.2 < low < 0 < high < 0.2 and result["status"] == "no_winner_yet"


def test_an_arm_no_one_is_in_never_leads() -> None:
    """A variation at share 0 has only its prior: against a low conversion rate that prior "wins"
    about half the draws, which named it the leader of a test it is not part of."""
    arms = [Arm("a", 400, successes=8, trials=400), Arm("b", 0, successes=0, trials=0)]
    result = winner("purchases", arms)
    assert result["leader"] == "a", result
    assert winner("purchases", [Arm("a", 0, 0, 0), Arm("b", 0, 0, 0)])["leader"] is None
