"""Report queries: load exactly the rows the report maths needs, grouped in SQL where possible.

Cost is bounded by the users allocated in the range (one grouped pass over journeys), the
grouped send counts, the non-bot hits of the campaign in the range (index ix_hit_campaign),
and purchases/add-to-carts of users who clicked (ix_event_user_time), fetched in chunks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import func
from sqlalchemy import select as sa_select  # sqlmodel's select is typed for at most 4 columns
from sqlmodel import Session, col, select

from domain.reports import Allocation, Hit, SendCount, SiteEvent
from store.tables import Event, Journey, Send, User
from store.tracking_tables import TrackingHit

CHUNK = 500
SENT = ("accepted", "failed")  # a provider call was made (a skipped step made none)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def allocations(s: Session, campaign_id: str, start: datetime, end: datetime) -> list[Allocation]:
    """Users whose FIRST trigger of the campaign (ever, test users excluded) is in [start, end)."""
    first = (
        select(Journey.user_id, func.min(Journey.triggered_at).label("first_at"))
        .where(Journey.campaign_id == campaign_id, col(Journey.is_test).is_(False))
        .group_by(col(Journey.user_id))
        .subquery()
    )
    rows = s.exec(
        select(Journey.user_id, Journey.variation_id, Journey.is_control, Journey.triggered_at)
        .join(first, (first.c.user_id == Journey.user_id) & (first.c.first_at == Journey.triggered_at))
        .where(Journey.campaign_id == campaign_id, first.c.first_at >= start, first.c.first_at < end)
    ).all()
    out: dict[str, Allocation] = {}
    for user_id, variation_id, is_control, at in rows:
        out.setdefault(user_id, Allocation(user_id, variation_id, is_control, at))
    return list(out.values())


def send_counts(s: Session, campaign_id: str, start: datetime, end: datetime) -> list[SendCount]:
    """Send requests grouped by user, variation, step, channel and UTC day (for the chart)."""
    day = func.date(Send.created_at)
    rows = s.execute(
        sa_select(col(Send.user_id), col(Send.variation_id), col(Send.step_index), col(Send.channel), day, func.count())
        .where(col(Send.campaign_id) == campaign_id, col(Send.status).in_(SENT),
               col(Send.created_at) >= start, col(Send.created_at) < end)  # fmt: skip
        .group_by(col(Send.user_id), col(Send.variation_id), col(Send.step_index), col(Send.channel), day)
    ).all()
    return [SendCount(u, v, i, c, int(n), str(d)) for u, v, i, c, d, n in rows]


def hits(s: Session, campaign_id: str, start: datetime, end: datetime) -> list[Hit]:
    rows = s.execute(
        sa_select(col(TrackingHit.user_id), col(TrackingHit.variation_id), col(TrackingHit.step_index),
                  col(TrackingHit.channel), col(TrackingHit.kind), col(TrackingHit.at))  # fmt: skip
        .where(col(TrackingHit.campaign_id) == campaign_id, col(TrackingHit.bot).is_(False),
               col(TrackingHit.at) >= start, col(TrackingHit.at) < end)  # fmt: skip
    ).all()
    return [Hit(u, v, i, c, k, at) for u, v, i, c, k, at in rows]


def site_events(s: Session, section_id: str, users: Sequence[str], start: datetime, end: datetime) -> list[SiteEvent]:
    """Purchases and add-to-carts of these users in [start, end); `identified` from the user's CUID."""
    out: list[SiteEvent] = []
    for chunk in _chunks(sorted(set(users))):
        identified = {
            u for u, cuid in s.exec(select(User.id, User.cuid).where(col(User.id).in_(chunk))).all() if cuid
        }
        rows = s.execute(
            sa_select(col(Event.id), col(Event.user_id), col(Event.kind), col(Event.received_at), col(Event.value),
                      col(Event.transaction_id))  # fmt: skip
            .where(col(Event.section_id) == section_id, col(Event.user_id).in_(chunk),
                   col(Event.kind).in_(["purchase", "add_to_cart"]), col(Event.received_at) >= start, col(Event.received_at) < end)  # fmt: skip
        ).all()
        out.extend(SiteEvent(i, u, k, at, float(v or 0.0), tx, u in identified) for i, u, k, at, v, tx in rows)
    return out


def sends_since(s: Session, campaign_ids: Sequence[str], since: datetime) -> dict[str, int]:
    """Send requests per campaign since `since` (campaign ids keep the query on its index)."""
    counts: dict[str, int] = defaultdict(int)
    for chunk in _chunks(list(campaign_ids)):
        rows = s.exec(
            select(Send.campaign_id, func.count())
            .where(col(Send.campaign_id).in_(chunk), col(Send.status).in_(SENT), Send.created_at >= since)
            .group_by(col(Send.campaign_id))
        ).all()
        counts.update({c: int(n) for c, n in rows})
    return counts

