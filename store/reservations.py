"""Atomic cap-and-priority reservation of a message slot for (user, channel).

All of a user's reservations are serialised (`lock_key` per user), so "count, then insert"
is exact under concurrency on both SQLite and PostgreSQL. The reservation's primary key is the
send key: a retried decision finds its own reservation and never counts twice. A send that
fails for good releases its slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, func, insert, or_, select, update
from sqlmodel import Session

from domain.caps import CapPolicy, Competitor, cap_reason, outranked_by
from store.locks import lock_key
from store.statements import table_of
from store.tables import Campaign, CapReservation, Journey


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

    @property
    def explained(self) -> str | None:
        """The refusal as recorded for operators: the reason, and which campaign or cap when known."""
        return f"{self.reason}: {self.detail}" if self.reason and self.detail else self.reason


RESERVATION = table_of(CapReservation)
JOURNEY = table_of(Journey)
CAMPAIGN = table_of(Campaign)
_r = RESERVATION.c


def _live_within(window_from: str, window_to: str) -> tuple[ColumnElement[bool], ...]:
    """Unreleased reservations of the request's (section, user, channel) in a window, but its own."""
    return (
        _r.section_id == bindparam("section_id"),
        _r.user_id == bindparam("user_id"),
        _r.channel == bindparam("channel"),
        _r.released == False,  # noqa: E712  (SQL, as indexed)
        _r.reserved_at > bindparam(window_from, type_=_r.reserved_at.type),
        _r.reserved_at < bindparam(window_to, type_=_r.reserved_at.type),
        _r.key != bindparam("key"),
    )


# Prepared once (docs/performance.md): built per call, these cost more CPU than running them.
_COUNT_ALL = select(func.count()).select_from(RESERVATION).where(*_live_within("after", "before"))
_COUNT_CAMPAIGN = _COUNT_ALL.where(_r.campaign_id == bindparam("campaign_id"))
_STATE = select(_r.released).where(_r.key == bindparam("key"))
_RENEW = update(RESERVATION).where(_r.key == bindparam("slot")).values(
    released=False, reserved_at=bindparam("as_of", type_=_r.reserved_at.type)
)
_RESERVE = insert(RESERVATION)
_RELEASE = update(RESERVATION).where(_r.key == bindparam("slot"), _r.released == False).values(released=True)  # noqa: E712
_j = JOURNEY.c
_c = CAMPAIGN.c
# A journey is still open (may yet send) only while its campaign is active: a paused or archived
# campaign's journeys skip their steps, so they must not silence other campaigns meanwhile.
_OPEN = (_j.status == "active") & (_c.status == "active")
_COMPETITORS = select(
    _j.campaign_id, _j.priority, _OPEN.label("open"), _j.triggered_at, _j.last_sent_at
).select_from(JOURNEY.join(CAMPAIGN, _c.id == _j.campaign_id)).where(
    _j.section_id == bindparam("section_id"),
    _j.user_id == bindparam("user_id"),
    _j.campaign_id != bindparam("campaign_id"),
    _j.is_control == False,  # noqa: E712
    or_(_j.status == "active", _j.last_sent_at > bindparam("recent_after", type_=_j.last_sent_at.type)),
)


def _count(session: Session, req: SlotRequest, window: timedelta, campaign_id: str | None) -> int:
    """Live reservations within `window` of `as_of`, on either side.

    Concurrent decisions commit in lock order, not in `as_of` order: a reservation committed
    just before us may carry a slightly later `as_of` than ours (and time-skipped journeys each
    have their own clock). Counting only `reserved_at <= as_of` let such a decision miss it and
    grant one slot too many; any reservation less than a window away shares a window with us.
    """
    params = {
        "section_id": req.section_id,
        "user_id": req.user_id,
        "channel": req.channel,
        "after": req.as_of - window,
        "before": req.as_of + window,
        "key": req.key,
    }
    if campaign_id is None:
        return int(session.execute(_COUNT_ALL, params).scalar_one())
    return int(session.execute(_COUNT_CAMPAIGN, {**params, "campaign_id": campaign_id}).scalar_one())


def _competitors(session: Session, req: SlotRequest, window: timedelta) -> list[Competitor]:
    params = {
        "section_id": req.section_id,
        "user_id": req.user_id,
        "campaign_id": req.campaign_id,
        "recent_after": req.as_of - window,
    }
    return [
        Competitor(j.campaign_id, j.priority, bool(j.open), j.triggered_at, j.last_sent_at)
        for j in session.execute(_COMPETITORS, params)
    ]


def reserve(session: Session, req: SlotRequest, policy: CapPolicy, priority_window: timedelta) -> SlotVerdict:
    """Grant a slot unless a cap or a higher-priority campaign forbids it (inside the caller's tx)."""
    lock_key(session, f"caps/{req.section_id}/{req.user_id}")
    released = session.execute(_STATE, {"key": req.key}).scalar_one_or_none()
    if released is False:
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
    if released:  # released earlier (failed send) and now retried: count it again
        session.execute(_RENEW, {"slot": req.key, "as_of": req.as_of})
    else:
        session.execute(
            _RESERVE,
            {
                "key": req.key,
                "section_id": req.section_id,
                "user_id": req.user_id,
                "channel": req.channel,
                "campaign_id": req.campaign_id,
                "reserved_at": req.as_of,
                "released": False,
            },
        )
    return SlotVerdict(True)


def release(session: Session, key: str) -> None:
    """Give a slot back (the send failed for good)."""
    session.execute(_RELEASE, {"slot": key})
