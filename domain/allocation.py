"""Variation allocation: deterministic per (campaign, user), proportional to the shares.

A user always lands in the same variation of a campaign (re-triggers, new journeys, replays),
without any shared state: the bucket is a hash of the campaign id and the user key.
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
