"""`keep_or_allocate`: the first journey's variation while the spec has it, else the hash."""

from __future__ import annotations

from domain.allocation import allocate, keep_or_allocate
from domain.campaign import Variation

STEP = {"name": "s", "messages": {"email": {}}}


def _spec(*shares: tuple[str, int]) -> list[Variation]:
    return [Variation(id=vid, name=vid, share=share, steps=[STEP]) for vid, share in shares]


def test_the_first_variation_is_kept_while_it_exists_whatever_its_share() -> None:
    spec = _spec(("a", 100), ("b", 0))
    assert keep_or_allocate("c", "u", spec, "b").id == "b"  # no new user goes to b; its own stay
    assert keep_or_allocate("c", "u", spec, "a").id == "a"


def test_no_first_variation_or_a_removed_one_allocates_afresh() -> None:
    spec = _spec(("a", 50), ("b", 50))
    for uid in (f"u{i}" for i in range(50)):
        assert keep_or_allocate("c", uid, spec, None) == allocate("c", uid, spec)
        assert keep_or_allocate("c", uid, spec, "gone") == allocate("c", uid, spec)
