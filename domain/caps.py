"""Frequency caps and campaign priority: the rules deciding whether a step may send now.

Both are evaluated inside one store transaction per user (see `store/reservations.py`), so
the counts below are exact at the moment of the decision. Every time is the journey's own
workflow time, never the wall clock of the process deciding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class CapPolicy:
    """The global cap: at most `max_messages` per user per channel in any rolling `window`."""

    max_messages: int = 5
    window: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class Competitor:
    """Another journey of the same user, from a different campaign (never a holdout)."""

    campaign_id: str
    priority: int
    active: bool
    triggered_at: datetime
    last_sent_at: datetime | None


def cap_reason(
    *,
    global_policy: CapPolicy,
    global_used: int,
    campaign_limit: int | None,
    campaign_used: int,
) -> str | None:
    """'global_cap' / 'campaign_cap' when sending one more would exceed a cap, else None."""
    if global_used >= global_policy.max_messages:
        return "global_cap"
    if campaign_limit is not None and campaign_used >= campaign_limit:
        return "campaign_cap"
    return None


def outranked_by(
    *, priority: int, competitors: Iterable[Competitor], as_of: datetime, window: timedelta
) -> Competitor | None:
    """The higher-priority campaign this step yields to, if any.

    The rule (docs/campaigns.md, "Campaign priority"): a step is outranked when the same user
    has a journey of a campaign with a strictly higher priority that either is still open and
    was triggered within `window` of this send, or sent a message (any channel) within
    `window` of this send. Equal priorities never outrank each other; caps apply to both.
    Journeys have their own clocks (time skipping), hence "within" in both directions.
    """
    best: Competitor | None = None
    for c in competitors:
        if c.priority <= priority:
            continue
        pending = c.active and abs(as_of - c.triggered_at) <= window
        sent = c.last_sent_at is not None and abs(as_of - c.last_sent_at) <= window
        if (pending or sent) and (best is None or c.priority > best.priority):
            best = c
    return best
