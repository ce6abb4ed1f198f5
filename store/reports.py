"""Report queries: the users selected by the time range, then counts grouped in SQL.

The users who FIRST triggered the campaign in [start, end) are computed once into a temporary
table (`user_id`, `first_at`) and every other query joins it, so the database returns only
grouped counts (variations x channels x steps x days) plus the individual human clicks and
the purchases of users who clicked, which attribution needs. Python work therefore follows
the number of clicks, not the number of sends or users.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Column, MetaData, String, Table, func, insert
from sqlalchemy import select as sa_select  # sqlmodel's select is typed for at most 4 columns
from sqlmodel import Session, col, select

from domain.reports import Click, HitGroup, ReportInput, SendGroup, SiteEvent
from store.tables import Event, Journey, Send, User, UTCDateTime
from store.tracking_tables import TrackingHit

CHUNK = 500
SENT = ("accepted", "failed")  # a provider call was made (a skipped step made none)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


@contextmanager
def _first_triggers(s: Session, campaign_id: str, start: datetime, end: datetime) -> Iterator[Table]:
    """A temp table of users whose first trigger (test users excluded) falls in [start, end)."""
    table = Table(
        f"rpt_first_{secrets.token_hex(4)}",
        MetaData(),
        Column("user_id", String(40), primary_key=True),
        Column("first_at", UTCDateTime(), nullable=False),
        prefixes=["TEMPORARY"],
    )
    conn = s.connection()
    table.create(conn)
    try:
        first_at = func.min(Journey.triggered_at)
        conn.execute(
            insert(table).from_select(
                ["user_id", "first_at"],
                sa_select(col(Journey.user_id), first_at)
                .where(col(Journey.campaign_id) == campaign_id, col(Journey.is_test).is_(False))
                .group_by(col(Journey.user_id))
                .having((first_at >= start) & (first_at < end)),
            )
        )
        if conn.dialect.name == "postgresql":
            # Without statistics the planner assumes a tiny temp table and picks nested loops.
            conn.exec_driver_sql(f"ANALYZE {table.name}")
        yield table
    finally:
        table.drop(conn)


def load(s: Session, section_id: str, campaign_id: str, start: datetime, end: datetime) -> ReportInput:
    with _first_triggers(s, campaign_id, start, end) as f:
        uid, first_at = f.c.user_id, f.c.first_at
        users = s.execute(
            sa_select(col(Journey.variation_id), func.count(func.distinct(col(Journey.user_id))))
            .join(f, (uid == col(Journey.user_id)) & (first_at == col(Journey.triggered_at)))
            .where(col(Journey.campaign_id) == campaign_id)
            .group_by(col(Journey.variation_id))
        ).all()

        sent = (col(Send.campaign_id) == campaign_id, col(Send.status).in_(SENT),
                col(Send.created_at) >= start, col(Send.created_at) < end)  # fmt: skip
        day = func.date(col(Send.created_at))
        sends = s.execute(
            sa_select(col(Send.variation_id), col(Send.channel), col(Send.step_index), day, func.count())
            .join(f, uid == col(Send.user_id)).where(*sent)
            .group_by(col(Send.variation_id), col(Send.channel), col(Send.step_index), day)
        ).all()
        distinct_sent = func.count(func.distinct(col(Send.user_id)))
        channel_users = s.execute(
            sa_select(col(Send.variation_id), col(Send.channel), distinct_sent)
            .join(f, uid == col(Send.user_id)).where(*sent).group_by(col(Send.variation_id), col(Send.channel))
        ).all()
        step_users = s.execute(
            sa_select(col(Send.variation_id), col(Send.step_index), distinct_sent)
            .join(f, uid == col(Send.user_id)).where(*sent).group_by(col(Send.variation_id), col(Send.step_index))
        ).all()

        human = (col(TrackingHit.campaign_id) == campaign_id, col(TrackingHit.bot).is_(False),
                 col(TrackingHit.at) >= start, col(TrackingHit.at) < end, col(TrackingHit.at) >= first_at)  # fmt: skip
        on_hit = uid == col(TrackingHit.user_id)
        hits = s.execute(
            sa_select(col(TrackingHit.variation_id), col(TrackingHit.channel), col(TrackingHit.step_index),
                      col(TrackingHit.kind), func.count())  # fmt: skip
            .join(f, on_hit).where(*human)
            .group_by(col(TrackingHit.variation_id), col(TrackingHit.channel), col(TrackingHit.step_index), col(TrackingHit.kind))
        ).all()
        is_click = col(TrackingHit.kind) == "click"
        click_users = s.execute(
            sa_select(col(TrackingHit.variation_id), func.count(func.distinct(col(TrackingHit.user_id))))
            .join(f, on_hit).where(*human, is_click).group_by(col(TrackingHit.variation_id))
        ).all()
        clicks = s.execute(
            sa_select(col(TrackingHit.user_id), col(TrackingHit.variation_id), col(TrackingHit.step_index),
                      col(TrackingHit.channel), col(TrackingHit.at))  # fmt: skip
            .join(f, on_hit).where(*human, is_click)
        ).all()
        # Purchases/add-to-carts in the range of selected users who clicked at least once (nobody
        # else can be attributed); `identified` = the buyer has a CUID. The subquery is not
        # correlated, so planners compute it once instead of once per event.
        clickers = sa_select(col(TrackingHit.user_id)).where(*human, is_click).join(f, on_hit)
        events = s.execute(
            sa_select(col(Event.id), col(Event.user_id), col(Event.kind), col(Event.received_at), col(Event.value),
                      col(Event.transaction_id), col(User.cuid))  # fmt: skip
            .join(f, uid == col(Event.user_id))
            .join(User, col(User.id) == col(Event.user_id), isouter=True)
            .where(col(Event.section_id) == section_id, col(Event.kind).in_(["purchase", "add_to_cart"]),
                   col(Event.received_at) >= start, col(Event.received_at) < end,
                   col(Event.user_id).in_(clickers))  # fmt: skip
        ).all()
    return ReportInput(
        users={v: int(n) for v, n in users},
        channel_users={(v, c): int(n) for v, c, n in channel_users},
        step_users={(v, i): int(n) for v, i, n in step_users},
        sends=[SendGroup(v, c, i, int(n), str(d)) for v, c, i, d, n in sends],
        hits=[HitGroup(v, c, i, k, int(n)) for v, c, i, k, n in hits],
        click_users={v: int(n) for v, n in click_users},
        clicks=[Click(u, v, i, c, at) for u, v, i, c, at in clicks],
        events=[SiteEvent(i, u, k, at, float(v or 0.0), tx, bool(cuid)) for i, u, k, at, v, tx, cuid in events],
    )


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
