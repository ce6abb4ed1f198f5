"""Report queries: pre-aggregated counters for whole cohort hours, raw queries for the rest.

A report for [from, to) covers the users whose FIRST trigger falls in the range (cohort
semantics) and everything they did for the campaign, at any time. Cohorts of different hours
are disjoint and every figure is a sum over users, so `load` adds up
- the counters (store/report_tables.py) of the whole hours inside the range, and
- an exact raw computation (`load_raw`) for the users first triggered in the partial hours at
  either edge.
`load_raw` over the whole range, with cohorts computed from journeys, is the reference the
counters are tested against.

Raw path: the selected users (`user_id`, `first_at`) go into a temporary table once and every
query joins it, so the database returns only grouped counts plus the individual human clicks
and the purchases of users who clicked, which attribution needs. A purchase or add-to-cart whose
raw event is gone (its buyer erased, or retention purged it) is read from the report row kept
for it, as the counters read it: the figures then do not depend on where a range's edges fall.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter, Column, MetaData, String, Table, case, exists, func, insert, literal, or_, true, union_all,
)
from sqlalchemy import select as sa_select  # sqlmodel's select is typed for at most 4 columns
from sqlmodel import Session, col, select

from domain.reports import (
    Aggregate,
    AttributedGroup,
    Click,
    NO_CURRENCY as NO_CURRENCY,  # re-exported: the currency key of purchases sent without one
    Conversion,
    ConversionCurrencyGroup,
    ConversionGroup,
    FailureGroup,
    HitGroup,
    ReportInput,
    SendGroup,
    SiteEvent,
    money,
)
from store.report_rollup import (
    FAILED,
    FAILED_METRIC,
    MAYBE_DELIVERED_METRIC,
    OPT_OUT_METRIC,
    PER_SEND,
    SENDS_HOUR_METRIC,
    SENT,
    conversion_candidates,
    currency_sql,
    day_sql,
    earlier_event_of_transaction,
    finite_value,
    finite_value_sql,
    hour_key_sql,
    hour_of,
    identified_sql,
    of_test_journey,
    provider_opted_out,
    sent_by_test_journey,
)
from store.report_tables import ReportAttribution, ReportCohort, ReportConversion, ReportRollup, ReportSettings
from store.tables import Event, Journey, Send, User, UTCDateTime
from store.tracking_tables import FIRST_OF_SEND, TrackingHit

HOUR = timedelta(hours=1)
SEND_METRICS: dict[str, Any] = {metric: kind for kind, metric in PER_SEND.items()}  # counter -> hit kind
CHUNK = 500
Ranges = Sequence[tuple[datetime, datetime]]  # disjoint [start, end) ranges of first triggers
PerCurrency = dict[str, dict[str, float]]  # variation -> currency -> purchase value


@dataclass
class ReportData(ReportInput):
    """The report input plus each attributed purchase's currency.

    Rejoin cannot convert currencies (no exchange rates offline). With no report currency set
    (`report_currency`), every purchase's value adds to revenue, as it always did, and the
    breakdown per currency shows the mix; with one set, revenue adds the purchases in it or
    without a currency, and the others' values reach `domain.reports` as 0 (they still count as
    purchases and buyers) and are kept apart (docs/reports.md, "Revenue and currencies").
    """

    currency: str | None = None  # the section's report currency when the input was loaded
    # Attributed in SQL (whole cohort hours): (variation, currency key, in revenue) -> value.
    currency_groups: dict[tuple[str, str, bool], float] = field(default_factory=dict)
    # Raw purchases, attributed or not (attribution decides): event id -> (currency key, value, in revenue).
    event_currencies: dict[str, tuple[str, float, bool]] = field(default_factory=dict)


@dataclass
class CurrencyRevenue:
    """Attributed purchase value per variation and currency: added to revenue, and kept apart."""

    in_revenue: PerCurrency = field(default_factory=dict)
    apart: PerCurrency = field(default_factory=dict)

    def add(self, variation_id: str, currency: str, value: float, counted: bool) -> None:
        values = (self.in_revenue if counted else self.apart).setdefault(variation_id, {})
        values[currency] = values.get(currency, 0.0) + value


def report_currency(s: Session, section_id: str) -> str | None:
    """The section's report currency (PATCH /section `currency`); None: not set."""
    row = s.get(ReportSettings, section_id)
    return row.currency if row is not None else None


def save_report_currency(s: Session, section_id: str, currency: str | None) -> None:
    row = s.get(ReportSettings, section_id) or ReportSettings(section_id=section_id)
    row.currency = currency
    s.add(row)


def in_revenue(currency: str | None, report: str | None) -> bool:
    """Whether a purchase's value adds to revenue: no report currency set, none given, or the report's."""
    return report is None or currency is None or currency == report


def currency_revenue(data: ReportInput, agg: Aggregate) -> CurrencyRevenue:
    """Attributed purchase value per variation and currency, to the cent, from both parts of a
    report: the groups attributed in SQL and the raw purchases `agg` attributed."""
    out = CurrencyRevenue()
    if not isinstance(data, ReportData):
        return out
    for (vid, currency, counted), value in data.currency_groups.items():
        out.add(vid, currency, value, counted)
    for item in agg.attributed:
        known = data.event_currencies.get(item.event.id)
        if known is not None and item.event.kind == "purchase":
            out.add(item.click.variation_id, *known)
    return CurrencyRevenue(_in_cents(out.in_revenue), _in_cents(out.apart))


def _in_cents(per_variation: PerCurrency) -> PerCurrency:
    return {v: {c: money(x) for c, x in sorted(values.items())} for v, values in sorted(per_variation.items())}


def currency_totals(per_variation: PerCurrency) -> dict[str, float]:
    """Per-variation values per currency summed over the variations, to the cent."""
    total: dict[str, float] = defaultdict(float)
    for values in per_variation.values():
        for currency, value in values.items():
            total[currency] += value
    return {c: money(x) for c, x in sorted(total.items())}


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


@contextmanager
def _first_triggers(s: Session, campaign_id: str, ranges: Ranges, registry: bool) -> Iterator[Table]:
    """A temp table of users whose first trigger (test users excluded) falls in one of the ranges.

    `ranges`: disjoint [start, end) pairs (a report's two edges go in one table, one set of queries).

    `registry`: read them from the cohort registry (an index range) instead of grouping all the
    campaign's journeys (the reference definition, which the registry is tested against).
    """
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
        cohort = col(ReportCohort.first_at)

        def in_ranges(at: Any) -> Any:
            return or_(*((at >= a) & (at < b) for a, b in ranges))

        users = (
            sa_select(col(ReportCohort.user_id), cohort)
            .where(col(ReportCohort.campaign_id) == campaign_id, in_ranges(cohort))
            if registry
            else sa_select(col(Journey.user_id), first_at)
            .where(col(Journey.campaign_id) == campaign_id, col(Journey.is_test).is_(False))
            .group_by(col(Journey.user_id))
            .having(in_ranges(first_at))
        )
        conn.execute(insert(table).from_select(["user_id", "first_at"], users))
        if conn.dialect.name == "postgresql":
            # Without statistics the planner assumes a tiny temp table and picks nested loops.
            conn.exec_driver_sql(f"ANALYZE {table.name}")
        yield table
    finally:
        table.drop(conn)


def load(
    s: Session, section_id: str, campaign_id: str, start: datetime, end: datetime, window: timedelta
) -> ReportData:
    """The report input for users first triggered in [start, end): counters plus raw edges."""
    first_hour = hour_of(start) if start == hour_of(start) else hour_of(start) + HOUR
    last_hour = hour_of(end)
    if first_hour >= last_hour:
        return load_raw(s, section_id, campaign_id, start, end, registry=True)
    parts = [load_counters(s, section_id, campaign_id, first_hour, last_hour, window)]
    edges = [(a, b) for a, b in ((start, first_hour), (last_hour, end)) if a < b]
    if edges:  # both partial hours in one raw load: their users are disjoint, figures add up
        parts.append(load_raw_ranges(s, section_id, campaign_id, edges, registry=True))
    return combine(parts)


def combine(parts: Sequence[ReportData]) -> ReportData:
    """Inputs of disjoint sets of users, added up."""
    out = ReportData(users={}, currency=parts[0].currency if parts else None)
    for p in parts:
        for key, value in p.currency_groups.items():
            out.currency_groups[key] = out.currency_groups.get(key, 0.0) + value
        out.event_currencies.update(p.event_currencies)
        pairs: list[tuple[dict[Any, int], dict[Any, int]]] = [
            (out.users, p.users), (out.channel_users, p.channel_users),
            (out.step_users, p.step_users), (out.click_users, p.click_users),
        ]  # fmt: skip
        for mine, theirs in pairs:
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        out.sends += p.sends
        out.failures += p.failures
        out.hits += p.hits
        out.clicks += p.clicks
        out.events += p.events
        out.attributed_groups += p.attributed_groups
        out.conversions += p.conversions
        out.conversion_groups += p.conversion_groups
        out.conversion_currencies += p.conversion_currencies
        for series, theirs_ in ((out.revenue_by_day, p.revenue_by_day), (out.revenue_by_hour, p.revenue_by_hour)):
            for period, amount in theirs_.items():
                series[period] = series.get(period, 0.0) + amount
        for hour, n in p.sends_by_hour.items():
            out.sends_by_hour[hour] = out.sends_by_hour.get(hour, 0) + n
    return out


def load_counters(
    s: Session, section_id: str, campaign_id: str, first_hour: datetime, last_hour: datetime, window: timedelta
) -> ReportData:
    """Users first triggered in the whole hours [first_hour, last_hour), from the counters."""
    currency = report_currency(s, section_id)
    r = ReportRollup
    in_range = (col(r.campaign_id) == campaign_id, col(r.cohort_hour) >= first_hour, col(r.cohort_hour) < last_hour)
    dims = (col(r.metric), col(r.variation_id), col(r.channel), col(r.step_index), col(r.day))
    rows = s.execute(sa_select(*dims, func.sum(col(r.n))).where(*in_range).group_by(*dims)).all()
    inp = ReportData(users={}, currency=currency)
    for metric, v, ch, step, day, n in rows:
        n = int(n)
        if metric == "users":
            inp.users[v] = n
        elif metric == "sends":
            inp.sends.append(SendGroup(v, ch, step, n, day))
        elif metric == FAILED_METRIC:
            inp.failures.append(FailureGroup(v, ch, step, "failed", n))
        elif metric == OPT_OUT_METRIC:
            inp.failures.append(FailureGroup(v, ch, step, "opt_out", n))
        elif metric == MAYBE_DELIVERED_METRIC:
            inp.failures.append(FailureGroup(v, ch, step, "maybe", n))
        elif metric == SENDS_HOUR_METRIC:  # the hour is in the day column
            inp.sends_by_hour[day] = inp.sends_by_hour.get(day, 0) + n
        elif metric in ("impression", "click"):  # every human hit
            inp.hits.append(HitGroup(v, ch, step, metric, 0, total=n))
        elif metric in SEND_METRICS:  # the sends opened / clicked (their first human hit)
            inp.hits.append(HitGroup(v, ch, step, SEND_METRICS[metric], n, total=0))
        elif metric == "channel_users":
            inp.channel_users[(v, ch)] = n
        elif metric == "step_users":
            inp.step_users[(v, step)] = n
        elif metric == "click_users":
            inp.click_users[v] = n
    # An hour whose counted sends were all uncounted again (a send counted, then found to be a test
    # journey's or moved) sums to 0: no sends that hour, as the raw computation has none.
    inp.sends_by_hour = {hour: n for hour, n in inp.sends_by_hour.items() if n}
    attributed = s.execute(_attributed(s, section_id, campaign_id, first_hour, last_hour, window, currency))
    for level, v, ch, step, kind, n, total, users, sumsq in attributed:
        if level == "d":  # purchase value per UTC hour: the hour ('YYYYMMDDHH') is in the channel column
            inp.revenue_by_hour[ch] = inp.revenue_by_hour.get(ch, 0.0) + float(total)
            day = f"{ch[:4]}-{ch[4:6]}-{ch[6:8]}"
            inp.revenue_by_day[day] = inp.revenue_by_day.get(day, 0.0) + float(total)
        elif level == "m":  # purchase value per currency (the channel column; null: none given)
            counted = in_revenue(ch, currency)
            inp.currency_groups[(v, ch or NO_CURRENCY, counted)] = float(total)
        else:
            group = AttributedGroup(level, v, ch, step, kind, int(n), float(total), int(users), float(sumsq))
            inp.attributed_groups.append(group)
    enrolled = _enrolled_groups(campaign_id, first_hour, last_hour, window, currency)
    for level, v, cur, purchases, buyers, revenue, sumsq in s.execute(enrolled):
        if level == "m":  # value per currency (null: none given)
            by_currency = ConversionCurrencyGroup(v, cur or NO_CURRENCY, in_revenue(cur, currency), float(revenue))
            inp.conversion_currencies.append(by_currency)
        else:
            inp.conversion_groups.append(ConversionGroup(v, int(purchases), int(buyers), float(revenue), float(sumsq)))
    return inp


def _enrolled_groups(
    campaign_id: str, first_hour: datetime, last_hour: datetime, window: timedelta, currency: str | None
) -> Any:
    """Enrolled-user conversions of the cohorts, per variation (the arm of the buyer's first
    enrollment; level "v"): purchases within the window after it, distinct buyers, value and the
    sum over buyers of their value squared; and per variation and currency (level "m"): purchases
    and their value. With a report `currency`, a purchase in another adds 0 to the first (it still
    converts), as for attributed revenue; its value shows under its currency. One statement."""
    cv = ReportConversion.__table__.c  # type: ignore[attr-defined]
    value = cv.value if currency is None else case(
        (cv.currency.is_(None) | (cv.currency == currency), cv.value), else_=literal(0.0)
    )  # fmt: skip
    mine = (cv.campaign_id == campaign_id, cv.cohort_hour >= first_hour, cv.cohort_hour < last_hour,
            cv.lag_us <= window // timedelta(microseconds=1))  # fmt: skip
    per_user = (
        sa_select(cv.variation_id, cv.user_id, func.count().label("n"), func.sum(value).label("total"))
        .where(*mine)
        .group_by(cv.variation_id, cv.user_id)
        .subquery()
    )  # fmt: skip
    u = per_user.c
    sums = (func.sum(u.n), func.count(), func.sum(u.total), func.sum(u.total * u.total))
    per_variation = sa_select(literal("v"), u.variation_id, literal(""), *sums).group_by(u.variation_id)
    per_currency = (
        sa_select(literal("m"), cv.variation_id, cv.currency, func.count(), literal(0), func.sum(cv.value),
                  literal(0.0))
        .where(*mine)
        .group_by(cv.variation_id, cv.currency)
    )  # fmt: skip
    return union_all(per_variation, per_currency)


def _attributed(
    s: Session, section_id: str, campaign_id: str, first_hour: datetime, last_hour: datetime, window: timedelta,
    currency: str | None,
) -> Any:  # fmt: skip
    """Attribution of the cohorts' candidate rows, in SQL, as domain.reports.attribute does it.

    Each row already holds the buyer's last click before the event; the dedupe comes first, then
    the window: per (kind, user, transaction id or else event id) only the first event by (time,
    id) decides, and counts if it falls in the window (a repeat never counts, even when the
    first event was too late or came before any click). The first event may have no candidate
    row (no click before it), so a row with an earlier raw event of its transaction is dropped
    too: that keeps rows stored by a rebuild or an identity merge's recount (every event with a
    click before it) in line with the raw path. Then, per level (variation / variation and
    channel / variation and step) and kind: events, value, distinct buyers and the sum over
    buyers of their value squared; purchase value per UTC hour; and purchase value per variation
    and currency (level "m"). With a report `currency`, a purchase in another one adds 0 to the
    first two (docs/reports.md, "Revenue and currencies"). One statement: the kept rows are a CTE
    the parts share.
    """
    a = ReportAttribution.__table__.c  # type: ignore[attr-defined]
    full_value = finite_value_sql(a.value)
    value = full_value if currency is None else case(
        (a.currency.is_(None) | (a.currency == currency), full_value), else_=literal(0.0)
    )  # fmt: skip
    dedupe = case((a.transaction_id.is_(None), literal("id:") + a.event_id), else_=literal("tx:") + a.transaction_id)
    first = func.row_number().over(partition_by=(a.kind, a.user_id, dedupe), order_by=(a.at, a.event_id))
    ranked = (
        sa_select(a.user_id, a.kind, value.label("value"), a.at, a.variation_id, a.channel,
                  a.step_index, a.lag_us, first.label("rn"), a.currency, full_value.label("full_value"))
        .where(a.campaign_id == campaign_id, a.cohort_hour >= first_hour, a.cohort_hour < last_hour,
               ~earlier_event_of_transaction(section_id, a.user_id, a.kind, a.transaction_id, a.at, a.event_id))
        .subquery()
    )  # fmt: skip
    in_window = ranked.c.lag_us <= window // timedelta(microseconds=1)
    kept = sa_select(ranked).where(ranked.c.rn == 1, in_window).cte("kept")
    k = kept.c
    parts = []
    for level, dims in (("v", []), ("c", [k.channel]), ("s", [k.step_index])):
        keys = [k.variation_id, *dims, k.kind]
        per_user = (
            sa_select(*keys, k.user_id, func.count().label("n"), func.sum(k.value).label("total"))
            .group_by(*keys, k.user_id).subquery()
        )  # fmt: skip
        u = per_user.c
        channel = u.channel if level == "c" else literal("")
        step = u.step_index if level == "s" else literal(-1)
        parts.append(
            sa_select(literal(level), u.variation_id, channel, step, u.kind, func.sum(u.n), func.sum(u.total),
                      func.count(), func.sum(u.total * u.total))
            .group_by(u.variation_id, *[x for x in (channel, step) if not isinstance(x, BindParameter)], u.kind)
        )  # fmt: skip
    hour = hour_key_sql(s, k.at)  # by UTC hour: day series in any time zone are made of hours
    parts.append(
        sa_select(literal("d"), literal(""), hour, literal(-1), literal("purchase"), func.count(), func.sum(k.value),
                  literal(0), literal(0.0))
        .where(k.kind == "purchase").group_by(hour)
    )  # fmt: skip
    parts.append(
        sa_select(literal("m"), k.variation_id, k.currency, literal(-1), literal("purchase"), func.count(),
                  func.sum(k.full_value), literal(0), literal(0.0))
        .where(k.kind == "purchase").group_by(k.variation_id, k.currency)
    )  # fmt: skip
    return union_all(*parts)


def load_raw(
    s: Session, section_id: str, campaign_id: str, start: datetime, end: datetime, *, registry: bool = False
) -> ReportData:
    """The report input computed from the raw tables (the reference implementation)."""
    return load_raw_ranges(s, section_id, campaign_id, [(start, end)], registry=registry)


def load_raw_ranges(
    s: Session, section_id: str, campaign_id: str, ranges: Ranges, *, registry: bool = False
) -> ReportData:
    """`load_raw` for the users first triggered in any of the disjoint ranges."""
    currency = report_currency(s, section_id)
    with _first_triggers(s, campaign_id, ranges, registry) as f:
        uid, first_at = f.c.user_id, f.c.first_at
        users = s.execute(
            sa_select(col(Journey.variation_id), func.count(func.distinct(col(Journey.user_id))))
            .join(f, (uid == col(Journey.user_id)) & (first_at == col(Journey.triggered_at)))
            .where(col(Journey.campaign_id) == campaign_id)
            .group_by(col(Journey.variation_id))
        ).all()

        # A test journey's sends and hits never count, even of a user with a cohort (a merge): as the counters.
        sent = (col(Send.campaign_id) == campaign_id, col(Send.status).in_(SENT), col(Send.created_at) >= first_at,
                ~of_test_journey(col(Send.journey_id)))  # fmt: skip
        day = day_sql(s, col(Send.created_at))
        sends = s.execute(
            sa_select(col(Send.variation_id), col(Send.channel), col(Send.step_index), day, func.count())
            .join(f, uid == col(Send.user_id)).where(*sent)
            .group_by(col(Send.variation_id), col(Send.channel), col(Send.step_index), day)
        ).all()
        # Sends failed for good, and of those the ones whose recipient the provider reported gone.
        opted_out = func.sum(case((provider_opted_out(col(Send.key)), 1), else_=0))
        maybe_delivered = func.sum(case((col(Send.possible_duplicate).is_(True), 1), else_=0))
        failed = s.execute(
            sa_select(col(Send.variation_id), col(Send.channel), col(Send.step_index), func.count(), opted_out,
                      maybe_delivered)  # fmt: skip
            .join(f, uid == col(Send.user_id)).where(*sent, col(Send.status) == FAILED)
            .group_by(col(Send.variation_id), col(Send.channel), col(Send.step_index))
        ).all()
        hour = hour_key_sql(s, col(Send.created_at))
        sends_by_hour = s.execute(
            sa_select(hour, func.count()).join(f, uid == col(Send.user_id)).where(*sent).group_by(hour)
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
                 col(TrackingHit.at) >= first_at, ~sent_by_test_journey(col(TrackingHit.send_key)))  # fmt: skip
        on_hit = uid == col(TrackingHit.user_id)
        # The sends opened / clicked; an email send's open implied by its click is such a row too
        # (source `implied`), so no join of clicks to opens is needed here.
        first_hits = func.sum(case((FIRST_OF_SEND, 1), else_=0))
        hits = s.execute(
            sa_select(col(TrackingHit.variation_id), col(TrackingHit.channel), col(TrackingHit.step_index),
                      col(TrackingHit.kind), func.count(), first_hits)  # fmt: skip
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
        # Purchases/add-to-carts (at any time) of selected users who clicked at least once (nobody
        # else can be attributed); `identified` = the buyer had a CUID when the event was received
        # (rows stored before that flag: has one now). The subquery is not
        # correlated, so planners compute it once instead of once per event.
        clickers = sa_select(col(TrackingHit.user_id)).where(*human, is_click).join(f, on_hit)
        raw_events = (
            sa_select(col(Event.id), col(Event.user_id), col(Event.kind), col(Event.received_at), col(Event.value),
                      col(Event.transaction_id), identified_sql(), currency_sql(col(Event.data)))  # fmt: skip
            .join(f, uid == col(Event.user_id))
            .join(User, col(User.id) == col(Event.user_id), isouter=True)
            .where(col(Event.section_id) == section_id, col(Event.kind).in_(["purchase", "add_to_cart"]),
                   col(Event.user_id).in_(clickers))  # fmt: skip
        )
        events = s.execute(union_all(raw_events, _attributions_of_gone_events(campaign_id, ranges, f))).all()
        # Enrolled-user conversions: purchases after the user's first enrollment, under its arm
        # (the variation of their first journey, as the cohort registry keeps it).
        journey_at_first = (uid == col(Journey.user_id)) & (first_at == col(Journey.triggered_at))
        arms = (
            sa_select(col(Journey.user_id).label("user_id"), first_at.label("first_at"),
                      func.min(col(Journey.variation_id)).label("variation_id"))
            .join(f, journey_at_first)
            .where(col(Journey.campaign_id) == campaign_id, col(Journey.is_test).is_(False))
            .group_by(col(Journey.user_id), first_at)
            .subquery()
        )  # fmt: skip
        raw_conversions = conversion_candidates(s, section_id, arms, arms.c.user_id, arms.c.first_at).add_columns(
            arms.c.variation_id
        )
        conversions = s.execute(union_all(raw_conversions, _conversions_of_gone_events(campaign_id, ranges, f))).all()
    site_events, event_currencies = _site_events(events, currency)
    return ReportData(
        currency=currency,
        event_currencies=event_currencies,
        users={v: int(n) for v, n in users},
        channel_users={(v, c): int(n) for v, c, n in channel_users},
        step_users={(v, i): int(n) for v, i, n in step_users},
        sends=[SendGroup(v, c, i, int(n), str(d)) for v, c, i, d, n in sends],
        failures=_failure_groups(failed),
        sends_by_hour={str(h): int(n) for h, n in sends_by_hour},
        conversions=_conversions(conversions, currency),
        hits=[HitGroup(v, c, i, k, int(first or 0), total=int(n)) for v, c, i, k, n, first in hits],
        click_users={v: int(n) for v, n in click_users},
        clicks=[Click(u, v, i, c, at) for u, v, i, c, at in clicks],
        events=site_events,
    )


def _in_cohort_hours(cohort_hour: Any, ranges: Ranges) -> Any:
    """The stored rows of users first triggered in `ranges` lie in these cohort hours (their
    `ix_report_*_cohort` index range); the join to the selected users keeps exactly theirs."""
    return or_(*((cohort_hour >= hour_of(a)) & (cohort_hour < b) for a, b in ranges))


def _attributions_of_gone_events(campaign_id: str, ranges: Ranges, users: Table) -> Any:
    """The stored attributions of the selected users whose raw event is gone, as raw event rows.

    An erasure deletes the person's raw events and retention purges old ones, but their
    `report_attribution` rows stay (docs/security.md, "Kept, pseudonymous"; docs/reports.md):
    the counters of whole hours count them, so the raw edges must too, or a report's purchases
    would depend on whether its range is hour-aligned. A stored row is the event as ingestion
    saw it (identified: it had a click), with its order id as kept (an erased buyer's is a salted
    hash, still one per order); `domain.reports.attribute` then treats it as any raw event, against
    the clicks, which both keep. Columns as the raw event query's."""
    a = ReportAttribution.__table__.c  # type: ignore[attr-defined]
    kept = sa_select(a.event_id, a.user_id, a.kind, a.at, a.value, a.transaction_id, true(), a.currency)
    return _of_gone_events(kept, a, campaign_id, ranges, users)


def _conversions_of_gone_events(campaign_id: str, ranges: Ranges, users: Table) -> Any:
    """The stored enrolled-user conversions of the selected users whose raw purchase is gone (erased,
    or purged by retention), as `conversion_candidates` rows plus the variation, for the reason
    `_attributions_of_gone_events` gives. A stored row is never a repeat of a transaction."""
    cv = ReportConversion.__table__.c  # type: ignore[attr-defined]
    kept = sa_select(cv.event_id, cv.user_id, cv.at, cv.value, cv.currency, cv.lag_us, cv.variation_id)
    return _of_gone_events(kept, cv, campaign_id, ranges, users)


def _of_gone_events(kept: Any, c: Any, campaign_id: str, ranges: Ranges, users: Table) -> Any:
    """`kept`, rows of a table of report rows kept per event (columns `c`), limited to the campaign's
    selected users in `ranges` whose raw event is gone."""
    gone = ~exists().where(col(Event.id) == c.event_id)
    return kept.join(users, users.c.user_id == c.user_id).where(
        c.campaign_id == campaign_id, _in_cohort_hours(c.cohort_hour, ranges), gone
    )


def _site_events(
    rows: Sequence[Any], currency: str | None
) -> tuple[list[SiteEvent], dict[str, tuple[str, float, bool]]]:
    """Raw purchase/add-to-cart rows as `SiteEvent`s, and each purchase's (currency, value, in revenue).

    A purchase whose value the report `currency` keeps out of revenue reaches the maths as 0:
    it still counts as a purchase, and its buyer as a buyer."""
    events, currencies = [], {}
    for i, u, k, at, v, tx, known, cur in rows:
        value = finite_value(v)
        if k == "purchase":
            counted = in_revenue(cur, currency)
            currencies[i] = (cur or NO_CURRENCY, value, counted)
            value = value if counted else 0.0
        events.append(SiteEvent(i, u, k, at, value, tx, bool(known)))
    return events, currencies


def _failure_groups(rows: Sequence[Any]) -> list[FailureGroup]:
    """(variation, channel, step, failed, of those opted out, of those possibly delivered) rows as
    groups; zero counts left out."""
    groups = []
    for v, c, i, n, gone, maybe in rows:
        groups.append(FailureGroup(v, c, i, "failed", int(n)))
        if gone:
            groups.append(FailureGroup(v, c, i, "opt_out", int(gone)))
        if maybe:
            groups.append(FailureGroup(v, c, i, "maybe", int(maybe)))
    return groups


def _conversions(rows: Sequence[Any], currency: str | None) -> list[Conversion]:
    """Raw enrolled-user conversion rows (event, user, at, value, currency, lag in us, variation);
    a value the report `currency` keeps out of revenue is not `counted` (0 revenue, kept apart),
    as in `_site_events`."""
    out = []
    for event_id, user_id, _at, value, cur, lag_us, variation_id in rows:
        lag = timedelta(microseconds=int(lag_us))
        out.append(Conversion(event_id, user_id, variation_id, lag, finite_value(value), cur or NO_CURRENCY,
                              in_revenue(cur, currency)))  # fmt: skip
    return out


def sends_since(s: Session, campaign_ids: Sequence[str], since: datetime) -> dict[str, int]:
    """Send requests per campaign since `since`, test users' sends left out as the report leaves them.

    All sends (an index-only range count on `ix_send_campaign_status`) minus those of test
    journeys (a send's journey row says; batched runs' recipients have journey rows too), found
    from the campaign's few test journeys (`ix_journey_campaign_test`) rather than by looking up
    the journey of every send. A send without a journey row counts.
    """
    counts: dict[str, int] = defaultdict(int)
    window = (col(Send.status).in_(SENT), Send.created_at >= since)
    for chunk in _chunks(list(campaign_ids)):
        rows = s.exec(
            select(Send.campaign_id, func.count())
            .where(col(Send.campaign_id).in_(chunk), *window)
            .group_by(col(Send.campaign_id))
        ).all()
        counts.update({c: int(n) for c, n in rows})
        test_sends = s.exec(
            select(Journey.campaign_id, func.count())
            .join(Send, col(Send.journey_id) == col(Journey.id))
            .where(col(Journey.campaign_id).in_(chunk), Journey.is_test == True,  # noqa: E712  (the index's form)
                   col(Send.campaign_id) == col(Journey.campaign_id), *window)  # fmt: skip
            .group_by(col(Journey.campaign_id))
        ).all()
        for c, n in test_sends:
            counts[c] -= int(n)
    return counts
