"""Atomic cap-and-priority reservation of a message slot for (user, channel).

All of a user's reservations are serialised (`lock_key` per user), so "count, then insert"
is exact under concurrency on both SQLite and PostgreSQL. The reservation's primary key is the
send key: a retried decision finds its own reservation and never counts twice. A send that
fails for good releases its slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from domain.caps import CapPolicy, Competitor, cap_reason, outranked_by
from store.locks import lock_key
from store.tables import CapReservation, Journey


@dataclass(frozen=True)
class SlotRequest:
    key: str
    section_id: str
    user_id: str
    channel: str
    campaign_id: str
    priority: int
    as_of: datetime
    campaign_limit: int | None
    campaign_period: timedelta


@dataclass(frozen=True)
class SlotVerdict:
    granted: bool
    reason: str | None = None
    detail: str | None = None


def _count(session: Session, req: SlotRequest, window: timedelta, campaign_id: str | None) -> int:
    """Live reservations within `window` of `as_of`, on either side.

    Concurrent decisions commit in lock order, not in `as_of` order: a reservation committed
    just before us may carry a slightly later `as_of` than ours (and time-skipped journeys each
    have their own clock). Counting only `reserved_at <= as_of` let such a decision miss it and
    grant one slot too many; any reservation less than a window away shares a window with us.
    """
    q = select(func.count()).select_from(CapReservation).where(
        CapReservation.section_id == req.section_id,
        CapReservation.user_id == req.user_id,
        CapReservation.channel == req.channel,
        CapReservation.released == False,  # noqa: E712
        col(CapReservation.reserved_at) > req.as_of - window,
        col(CapReservation.reserved_at) < req.as_of + window,
        CapReservation.key != req.key,
    )
    if campaign_id is not None:
        q = q.where(CapReservation.campaign_id == campaign_id)
    return int(session.exec(q).one())


def _competitors(session: Session, req: SlotRequest, window: timedelta) -> list[Competitor]:
    rows = session.exec(
        select(Journey).where(
            Journey.section_id == req.section_id,
            Journey.user_id == req.user_id,
            Journey.campaign_id != req.campaign_id,
            Journey.is_control == False,  # noqa: E712
            or_(col(Journey.status) == "active", col(Journey.last_sent_at) > req.as_of - window),
        )
    ).all()
    return [Competitor(j.campaign_id, j.priority, j.status == "active", j.triggered_at, j.last_sent_at) for j in rows]


def reserve(session: Session, req: SlotRequest, policy: CapPolicy, priority_window: timedelta) -> SlotVerdict:
    """Grant a slot unless a cap or a higher-priority campaign forbids it (inside the caller's tx)."""
    lock_key(session, f"caps/{req.section_id}/{req.user_id}")
    existing = session.get(CapReservation, req.key)
    if existing is not None and not existing.released:
        return SlotVerdict(True, detail="already reserved under this key")
    rival = outranked_by(
        priority=req.priority, competitors=_competitors(session, req, priority_window), as_of=req.as_of, window=priority_window
    )
    if rival is not None:
        return SlotVerdict(False, "outranked", f"campaign {rival.campaign_id} (priority {rival.priority})")
    reason = cap_reason(
        global_policy=policy,
        global_used=_count(session, req, policy.window, None),
        campaign_limit=req.campaign_limit,
        campaign_used=_count(session, req, req.campaign_period, req.campaign_id)
        if req.campaign_limit is not None
        else 0,
    )
    if reason is not None:
        return SlotVerdict(False, reason)
    if existing is not None:  # released earlier (failed send) and now retried: count it again
        existing.released = False
        existing.reserved_at = req.as_of
        session.add(existing)
    else:
        session.add(
            CapReservation(
                key=req.key,
                section_id=req.section_id,
                user_id=req.user_id,
                channel=req.channel,
                campaign_id=req.campaign_id,
                reserved_at=req.as_of,
            )
        )
    return SlotVerdict(True)


def release(session: Session, key: str) -> None:
    """Give a slot back (the send failed for good)."""
    row = session.get(CapReservation, key)
    if row is not None and not row.released:
        row.released = True
        session.add(row)
