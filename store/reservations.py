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
from store.locks import lock_key, lock_keys
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


# `_COMPETITORS` of several users (of a batch), for one campaign's requests: the campaign filter is
# applied per request by the caller.
_COMPETITORS_OF_USERS = select(
    _j.user_id, _j.campaign_id, _j.priority, _OPEN.label("open"), _j.triggered_at, _j.last_sent_at
).select_from(JOURNEY.join(CAMPAIGN, _c.id == _j.campaign_id)).where(
    _j.section_id == bindparam("section_id"),
    _j.user_id.in_(bindparam("users", expanding=True)),
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


def cap_lock_key(section_id: str, user_id: str) -> str:
    """The lock serialising a user's reservations (`store.locks`). A caller may take it earlier in its
    transaction, before other rows of the user, to keep one lock order with other writers."""
    return f"caps/{section_id}/{user_id}"


def reserve(session: Session, req: SlotRequest, policy: CapPolicy, priority_window: timedelta) -> SlotVerdict:
    """Grant a slot unless a cap or a higher-priority campaign forbids it (inside the caller's tx)."""
    lock_key(session, cap_lock_key(req.section_id, req.user_id))
    released = session.execute(_STATE, {"key": req.key}).scalar_one_or_none()
    if released is False:
        return SlotVerdict(True, detail="already reserved under this key")
    verdict = _verdict(
        req,
        policy,
        priority_window,
        _competitors(session, req, priority_window),
        _count(session, req, policy.window, None),
        _count(session, req, req.campaign_period, req.campaign_id) if req.campaign_limit is not None else 0,
    )
    if verdict.granted:
        _take(session, [req], renewed={req.key} if released else set())
    return verdict


def _verdict(
    req: SlotRequest,
    policy: CapPolicy,
    priority_window: timedelta,
    competitors: list[Competitor],
    global_used: int,
    campaign_used: int,
) -> SlotVerdict:
    rival = outranked_by(priority=req.priority, competitors=competitors, as_of=req.as_of, window=priority_window)
    if rival is not None:
        return SlotVerdict(False, "outranked", f"campaign {rival.campaign_id} (priority {rival.priority})")
    reason = cap_reason(
        global_policy=policy, global_used=global_used, campaign_limit=req.campaign_limit, campaign_used=campaign_used
    )
    return SlotVerdict(False, reason) if reason is not None else SlotVerdict(True)


def _take(session: Session, reqs: list[SlotRequest], renewed: set[str]) -> None:
    """Write the granted slots: a new row each, or a slot released earlier (a failed send, now
    retried) counted again."""
    again = [{"slot": r.key, "as_of": r.as_of} for r in reqs if r.key in renewed]
    new = [
        {"key": r.key, "section_id": r.section_id, "user_id": r.user_id, "channel": r.channel,
         "campaign_id": r.campaign_id, "reserved_at": r.as_of, "released": False}
        for r in reqs if r.key not in renewed
    ]  # fmt: skip
    if again:
        session.execute(_RENEW, again)
    if new:
        session.execute(_RESERVE, new)


def reserve_many(
    session: Session, reqs: list[SlotRequest], policy: CapPolicy, priority_window: timedelta
) -> list[SlotVerdict]:
    """`reserve` of several users' slots at once (one section, one `as_of`, one request per user),
    with every user's lock taken in one call and each read done once for all: a batch's recipients.
    The counts and rivals are those `reserve` reads, filtered here from rows read for all."""
    if not reqs:
        return []
    section_id, as_of = reqs[0].section_id, reqs[0].as_of
    assert all(r.section_id == section_id and r.as_of == as_of for r in reqs)
    assert len({r.user_id for r in reqs}) == len(reqs), "one request per user"
    lock_keys(session, [cap_lock_key(section_id, r.user_id) for r in reqs])
    users = [r.user_id for r in reqs]
    states = dict(
        session.execute(select(_r.key, _r.released).where(_r.key.in_([r.key for r in reqs]))).tuples().all()
    )
    widest = max([policy.window, priority_window] + [r.campaign_period for r in reqs])
    live = session.execute(
        select(_r.key, _r.user_id, _r.channel, _r.campaign_id, _r.reserved_at).where(
            _r.section_id == section_id, _r.user_id.in_(users), _r.released == False,  # noqa: E712
            _r.reserved_at > as_of - widest, _r.reserved_at < as_of + widest,
        )
    ).all()  # fmt: skip
    rivals: dict[str, list[Competitor]] = {}
    for row in session.execute(
        _COMPETITORS_OF_USERS, {"section_id": section_id, "users": users, "recent_after": as_of - priority_window}
    ):
        rivals.setdefault(row.user_id, []).append(
            Competitor(row.campaign_id, row.priority, bool(row.open), row.triggered_at, row.last_sent_at)
        )

    def used(req: SlotRequest, window: timedelta, campaign_id: str | None) -> int:
        return sum(
            1
            for key, user_id, channel, campaign, at in live
            if user_id == req.user_id and channel == req.channel and key != req.key
            and as_of - window < at < as_of + window and campaign_id in (None, campaign)
        )  # fmt: skip

    verdicts: list[SlotVerdict] = []
    granted: list[SlotRequest] = []
    for req in reqs:
        if states.get(req.key) is False:
            verdicts.append(SlotVerdict(True, detail="already reserved under this key"))
            continue
        competitors = [c for c in rivals.get(req.user_id, []) if c.campaign_id != req.campaign_id]
        campaign_used = used(req, req.campaign_period, req.campaign_id) if req.campaign_limit is not None else 0
        verdict = _verdict(req, policy, priority_window, competitors, used(req, policy.window, None), campaign_used)
        verdicts.append(verdict)
        if verdict.granted:
            granted.append(req)
    _take(session, granted, renewed={r.key for r in granted if states.get(r.key) is True})
    return verdicts


def release(session: Session, key: str) -> None:
    """Give a slot back (the send failed for good)."""
    session.execute(_RELEASE, {"slot": key})
