"""Variation allocation: deterministic and proportional."""

from __future__ import annotations

from collections import Counter

from domain.allocation import allocate
from domain.campaign import Variation


def _variations() -> list[Variation]:
    step = {"name": "s", "messages": {"email": {}}}
    return [
        Variation(id="a", name="A", share=50, steps=[step]),  # type: ignore[list-item]
        Variation(id="b", name="B", share=30, steps=[step]),  # type: ignore[list-item]
        Variation(id="ctl", name="Holdout", share=20, control=True),
    ]


def test_allocation_matches_shares_over_10000_users() -> None:
    """Over 10,000 users each variation gets its share within 1.5 percentage points."""
    counts = Counter(allocate("cmp_1", f"usr_{i}", _variations()).id for i in range(10_000))
    assert abs(counts["a"] / 10_000 - 0.50) < 0.015, counts
    assert abs(counts["b"] / 10_000 - 0.30) < 0.015, counts
    assert abs(counts["ctl"] / 10_000 - 0.20) < 0.015, counts


def test_allocation_is_deterministic_per_campaign_and_user() -> None:
    """The same (campaign, user) always lands in the same variation; campaigns are independent."""
    vs = _variations()
    first = [allocate("cmp_1", f"usr_{i}", vs).id for i in range(500)]
    assert first == [allocate("cmp_1", f"usr_{i}", vs).id for i in range(500)]
    other = [allocate("cmp_2", f"usr_{i}", vs).id for i in range(500)]
    assert first != other


def test_zero_share_variation_never_allocated() -> None:
    """A variation with share 0 receives nobody."""
    step = {"name": "s", "messages": {"email": {}}}
    vs = [Variation(id="a", name="A", share=100, steps=[step]), Variation(id="b", name="B", share=0, steps=[step])]  # type: ignore[list-item]
    assert {allocate("c", f"u{i}", vs).id for i in range(2000)} == {"a"}
