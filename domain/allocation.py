"""Variation allocation: deterministic per (campaign, user), proportional to the shares, and sticky.

A user's first allocation in a campaign is a hash of the campaign id and the user key over the
spec's variations. Later journeys keep the variation the person was first allocated while the
spec still has it (`keep_or_allocate`): the hash alone moves people between arms when an edit
changes the variations or their shares, or when a device's user is merged into a person.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from domain.campaign import Variation

BUCKETS = 10_000  # resolution: shares are honoured to 0.01 %


def bucket(campaign_id: str, user_key: str) -> int:
    digest = hashlib.sha256(f"{campaign_id}\x00{user_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def allocate(campaign_id: str, user_key: str, variations: Sequence[Variation]) -> Variation:
    """Pick the variation whose cumulative share range contains the user's bucket."""
    b = bucket(campaign_id, user_key)
    cumulative = 0.0
    for v in variations:
        cumulative += v.share * BUCKETS / 100.0
        if b < cumulative:
            return v
    # Floating-point shortfall on the last boundary: the last variation with a share takes it.
    return next(v for v in reversed(variations) if v.share > 0)


def keep_or_allocate(
    campaign_id: str, user_key: str, variations: Sequence[Variation], first_variation_id: str | None
) -> Variation:
    """The variation of the person's first journey in the campaign (`first_variation_id`) while the
    spec still has it, control included; else (no journey yet, or that variation was removed) a
    fresh allocation. An A/B test must never show a person two arms, and the campaign report
    counts each person in their first journey's variation (their cohort)."""
    kept = next((v for v in variations if v.id == first_variation_id), None)
    return kept if kept is not None else allocate(campaign_id, user_key, variations)
