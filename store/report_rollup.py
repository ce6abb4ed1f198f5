"""Keeping the report pre-aggregation (store/report_tables.py) in step with the raw tables.

Write paths call these in the SAME transaction as the fact they count, so a counter can never
disagree with a committed fact: `register_cohort` when a journey is allocated, `count_send`
when a send reaches a final sent status, `count_hit` for a tracking hit, `attribute_event`
for an ingested purchase/add-to-cart. `rebuild` recomputes everything from the raw tables
with set-based INSERT ... SELECT (startup migration, `rejoin rebuild-reports`, benchmark).

Every figure is a sum over users, and a user counts in exactly one cohort (their first trigger),
so counters of different cohort hours add up; the unique-user counters are incremented on a
user's first such fact only (checked with an indexed query on the raw table).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    BindParameter,
    ColumnElement,
    Integer,
    String,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlmodel import Session, col

from domain.tracking import PRIVACY_PROXY_AGENT
from store.locks import lock_key
from store.report_tables import ReportAttribution, ReportCohort, ReportConversion, ReportRollup
from store.sends import SentMessage
from store.statements import dialect, per_dialect, table_of, upsert_base, upsert_for
from store.tables import Campaign, Decision, Event, Journey, Send, User
from store.tracking_tables import FIRST_OF_SEND, TrackingHit

log = logging.getLogger(__name__)

SENT = ("accepted", "failed")  # a provider call was made (a skipped step made none)
FAILED = "failed"  # final: the provider refused the send for good, or its retries ran out
# Counter metrics of sends that failed for good, and of those whose recipient the provider
# reported gone (Rejoin opted the recipient out): a variation's vendor rejections show beside
# its send requests (docs/reports.md, "Metrics").
FAILED_METRIC, OPT_OUT_METRIC = "failed", "opt_outs"
# Of the failed sends, those an attempt of which may have been delivered all the same (flagged
# `possible_duplicate`: an attempt's outcome was unknown, store/sends.py `maybe_delivered`): the
# report shows them apart as `possibly_delivered` (metric names: 16 characters at most).
MAYBE_DELIVERED_METRIC = "maybe_delivered"
# Send requests per UTC hour of the send (`day` holds 'YYYYMMDDHH'; no variation, channel or step):
# the day series in another time zone is made of whole hours (docs/reports.md, "Time zones").
SENDS_HOUR_METRIC = "sends_hour"
# Enrolled-user conversions are stored up to the longest attribution window a campaign may have
# (domain/campaign.py): the campaign's own window is applied when reading, so a changed window
# applies to stored purchases, and a purchase long after enrollment adds no row.
MAX_CONVERSION_LAG = timedelta(days=90)
PROVIDER_OPT_OUT = "recipient_gone"  # the delivery decision's `opted_out` detail (activities/delivery.py)
ATTRIBUTED_KINDS = ("purchase", "add_to_cart")
# Counter metrics of the sends opened / clicked by a human (their first human hit of the kind,
# `first_of_send`): reports show these as impressions and clicks, and CTR divides them. The
# `impression` and `click` counters keep every human hit (total_impressions, total_clicks).
PER_SEND = {"impression": "send_impression", "click": "send_click"}
PROXIED_SOURCES = ("pixel", "legacy")  # opens by an image GET (push impressions arrive by POST)
# A human click on an email send with no open implies its open (images blocked, or opened in Apple
# Mail, whose pixel loads are the privacy proxy's): recorded as a hit of this source, the send's
# first open, so per send opened >= clicked and CTR <= 1 (docs/reports.md). Email only: a push
# open is what the app reports (`PN_IMP`), and an SMS has no opens.
IMPLIED = "implied"
IMPLIED_OPEN_CHANNELS = ("email",)
ROLLUP = table_of(ReportRollup)
COHORT = table_of(ReportCohort)
ATTRIBUTION = table_of(ReportAttribution)
CONVERSION = table_of(ReportConversion)
SEND = table_of(Send)
EVENT = table_of(Event)
DECISION = table_of(Decision)
# Aliases for the test-journey checks below, so they never correlate with a query's own tables.
_TEST_JOURNEY = table_of(Journey).alias("test_journey")
_TEST_SEND = table_of(Send).alias("test_send")
ROLLUP_KEY = ["campaign_id", "cohort_hour", "variation_id", "channel", "step_index", "day", "metric"]


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_of(at: datetime) -> str:
    return at.astimezone(UTC).date().isoformat()


def hour_key_of(at: datetime) -> str:
    """The UTC hour of `at` as 'YYYYMMDDHH' (the `sends_hour` counters' `day`)."""
    return at.astimezone(UTC).strftime("%Y%m%d%H")


def hour_key_sql(s: Session, column: Any) -> ColumnElement[str]:
    """`hour_key_of` in SQL (independent of the session's time zone)."""
    if dialect(s) == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYYMMDDHH24")
    return func.strftime("%Y%m%d%H", column)


def hour_sql(s: Session, column: Any) -> ColumnElement[Any]:
    """`column` truncated to the UTC hour, in the stored form of UTCDateTime."""
    if dialect(s) == "postgresql":
        return func.timezone("UTC", func.date_trunc("hour", func.timezone("UTC", column)))
    return func.strftime("%Y-%m-%d %H:00:00.000000", column)


def day_sql(s: Session, column: Any) -> ColumnElement[str]:
    """The UTC day of `column` as 'YYYY-MM-DD' (independent of the session's time zone)."""
    if dialect(s) == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.date(column)


def lag_us_sql(s: Session, later: Any, earlier: Any) -> ColumnElement[int]:
    """`later - earlier` in whole microseconds, exactly (no floating-point day fractions)."""
    if dialect(s) == "postgresql":
        return cast(func.extract("epoch", later - earlier) * 1_000_000, BigInteger)

    # SQLite stores UTCDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds plus the digits.
    def us(x: Any) -> ColumnElement[int]:
        return cast(func.strftime("%s", x), BigInteger) * 1_000_000 + cast(func.substr(x, 21, 6), BigInteger)

    return us(later) - us(earlier)


# A purchase value stored as ±Infinity or NaN (versions before the API refused them took `1e400`
# as infinity) counts as 0: the purchase itself still counts, only its unknown value adds nothing,
# so one bad row neither hides the rest of the campaign's revenue (as skipping the group's sum
# would) nor turns every report into a 500 (JSON has no infinity). Every path a value takes into
# a report goes through one of these two.
def finite_value(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) else 0.0


def finite_value_sql(column: Any) -> ColumnElement[float]:
    """`column`, or 0 where it is NULL, ±Infinity or NaN (NaN sorts above every number in PostgreSQL)."""
    return case((column.between(-sys.float_info.max, sys.float_info.max), column), else_=0.0)


def identified_sql() -> ColumnElement[bool]:
    """Whether the buyer of an `Event` row (joined to its `User`) was identified when it arrived:
    ingestion's flag, or for rows stored before the flag existed, whether the user has a CUID now.
    Attribution asks it of every purchase, so a later login cannot make an anonymous one count."""
    flag = col(Event.identified)
    return flag.is_(True) | (flag.is_(None) & col(User.cuid).is_not(None))


def earlier_event_of_transaction(section_id: Any, user_id: Any, kind: Any, transaction_id: Any, at: Any,
                                 event_id: Any) -> Any:  # fmt: skip
    """EXISTS: the user has an earlier event (by time, then id) of this kind and transaction id.

    The first event of a transaction decides attribution and repeats never count (docs/reports.md).
    Values or columns alike; on `ix_event_user_time` (section, user, time). A NULL transaction id
    compares unknown: no match."""
    e = EVENT.c
    earlier = (e.received_at < at) | ((e.received_at == at) & (e.id < event_id))
    return exists().where(e.section_id == section_id, e.user_id == user_id, e.kind == kind,
                          e.transaction_id == transaction_id, earlier)  # fmt: skip


def event_currency(data: dict[str, Any] | None) -> str | None:
    """The currency a purchase was sent with (`properties.currency`), upper case; None: none.

    Rejoin has no exchange rates, so a report keeps each currency's value apart (docs/reports.md,
    "Revenue and currencies"). `currency_sql` is the same in SQL."""
    props = (data or {}).get("properties")
    raw = props.get("currency") if isinstance(props, dict) else None
    code = raw.strip().upper() if isinstance(raw, str) else ""
    return code or None


def currency_sql(data: Any) -> ColumnElement[str | None]:
    """`event_currency` of an `Event.data` column."""
    raw = data[("properties", "currency")].as_string()
    return func.nullif(func.upper(func.trim(raw)), "")


def provider_opted_out(send_key: Any) -> Any:
    """EXISTS: the failed send's outcome decision says the provider reported its recipient gone.

    The delivery records it (`{send key}:outcome`, detail `opted_out`) in the transaction that
    fails the send; a primary-key lookup per failed send. Raw path and rebuild read it."""
    d = DECISION.c
    return exists().where(d.key == send_key + ":outcome", d.detail["opted_out"].as_string() == PROVIDER_OPT_OUT)


def of_test_journey(journey_id: Any) -> Any:
    """EXISTS: the journey `journey_id` (a value or column) is a test journey (primary-key lookup).

    Test journeys never count in reports, even when their user has a cohort: an identity merge
    moves an anonymous device's non-test cohort onto the test person it logs in as."""
    j = _TEST_JOURNEY.c
    return exists().where(j.id == journey_id, j.is_test.is_(True))


def sent_by_test_journey(send_key: Any) -> Any:
    """EXISTS: the send `send_key` (a value or column) is a test journey's (two primary-key lookups);
    its hits count nowhere either."""
    return exists().where(_TEST_SEND.c.key == send_key, of_test_journey(_TEST_SEND.c.journey_id))


@per_dialect
def _bump_stmt(dialect_name: str) -> Any:
    ins = upsert_for(dialect_name, ROLLUP)
    return ins.on_conflict_do_update(index_elements=ROLLUP_KEY, set_={"n": ROLLUP.c.n + ins.excluded.n})


def bump(
    s: Session,
    campaign_id: str,
    hour: datetime,
    metric: str,
    *,
    variation_id: str = "",
    channel: str = "",
    step_index: int = -1,
    day: str = "",
    n: int = 1,
) -> None:
    """Add `n` to one counter (UPSERT: concurrent writers add up, never overwrite)."""
    counter = {
        "campaign_id": campaign_id,
        "cohort_hour": hour,
        "variation_id": variation_id,
        "channel": channel,
        "step_index": step_index,
        "day": day,
        "metric": metric,
        "n": n,
    }
    s.execute(_bump_stmt(s), counter)


# ------------------------------------------------------------------ write paths


def _const(value: Any, type_: Any) -> ColumnElement[Any]:
    """A typed constant in a SELECT list (PostgreSQL cannot infer a bare parameter's type there)."""
    return cast(literal(value, type_), type_)


def _param(name: str, type_: Any) -> ColumnElement[Any]:
    return cast(bindparam(name, type_=type_), type_)


def _users_row(source: Any) -> Any:
    """The `users` counter row (+1) of each cohort in `source` (campaign_id, cohort_hour, variation_id)."""
    return select(
        source.c.campaign_id,
        source.c.cohort_hour,
        source.c.variation_id,
        _const("", String),
        _const(-1, Integer),
        _const("", String),
        _const("users", String),
        _const(1, BigInteger),
    )


@per_dialect
def _cohort_stmt(dialect_name: str) -> Any:
    """Insert the cohort row unless the user has one; on PostgreSQL also bump `users`, same statement."""
    added = (
        upsert_for(dialect_name, COHORT)
        .values({c.name: bindparam(c.name, type_=c.type) for c in COHORT.columns})  # named: also inside WITH
        .on_conflict_do_nothing(index_elements=["campaign_id", "user_id"])
        .returning(COHORT.c.campaign_id, COHORT.c.cohort_hour, COHORT.c.variation_id)
    )
    if dialect_name != "postgresql":
        return added  # SQLite has no INSERT inside WITH: the caller bumps when a row comes back
    new = added.cte("added")
    ins = upsert_for(dialect_name, ROLLUP).from_select([*ROLLUP_KEY, "n"], _users_row(new)).add_cte(new)
    return ins.on_conflict_do_update(index_elements=ROLLUP_KEY, set_={"n": ROLLUP.c.n + ins.excluded.n})


_HELD_OUT = select(literal(1)).where(
    COHORT.c.campaign_id == bindparam("campaign_id"),
    COHORT.c.user_id == bindparam("user_id"),
    COHORT.c.variation_id == bindparam("variation_id"),
)


def held_out(s: Session, campaign_id: str, user_id: str, control_id: str) -> bool:
    """Whether the user's cohort of the campaign is its control `control_id` (held out already)."""
    params = {"campaign_id": campaign_id, "user_id": user_id, "variation_id": control_id}
    return s.execute(_HELD_OUT, params).first() is not None


def _cohort_of(journey: Journey) -> dict[str, Any]:
    return {
        "campaign_id": journey.campaign_id,
        "user_id": journey.user_id,
        "first_at": journey.triggered_at,
        "cohort_hour": hour_of(journey.triggered_at),
        "variation_id": journey.variation_id,
    }


def register_cohort(s: Session, journey: Journey) -> None:
    """A journey was allocated: the user's first non-test one starts their cohort."""
    if journey.is_test:
        return
    cohort = _cohort_of(journey)
    result = s.execute(_cohort_stmt(s), cohort)
    # RETURNING: rowcount is not reliable across drivers.
    if dialect(s) != "postgresql" and result.first() is not None:
        bump(s, journey.campaign_id, cohort["cohort_hour"], "users", variation_id=journey.variation_id)


def register_cohorts(s: Session, journeys: Sequence[Journey]) -> None:
    """`register_cohort` of several journeys: on PostgreSQL one statement for all (SQLite bumps
    `users` per row its INSERT returns, so it runs them one by one)."""
    if dialect(s) != "postgresql":
        for journey in journeys:
            register_cohort(s, journey)
        return
    # In the counter rows' key order: two transactions bumping the same rows in different orders
    # (two shards' chunks, variations a then b and b then a) deadlocked on PostgreSQL.
    cohorts = sorted(
        (_cohort_of(j) for j in journeys if not j.is_test),
        key=lambda c: (c["campaign_id"], c["cohort_hour"], c["variation_id"], c["user_id"]),
    )
    if cohorts:
        s.execute(_cohort_stmt(s), cohorts)


@per_dialect
def _count_send_stmt(dialect_name: str) -> Any:
    """The send's counters in one statement: `sends` (and `sends_hour`), `failed` / `opt_outs` /
    `maybe_delivered` when it failed for good / its recipient was reported gone / an attempt may
    have been delivered all the same, and `channel_users` / `step_users` when it is the
    user's first sent message on that channel / step. Nothing without a cohort that had started
    by the send, nor for a test journey's send: a test user who merged a non-test device has that
    device's cohort (the send row is written, so its journey is two primary-key lookups away)."""
    c = COHORT.c
    variation, channel, step = _param("variation_id", String), _param("channel", String), _param("step_index", Integer)
    in_cohort = (
        c.campaign_id == bindparam("campaign_id"),
        c.user_id == bindparam("user_id"),
        c.first_at <= bindparam("created_at"),
        ~sent_by_test_journey(bindparam("key")),
    )
    other = (
        SEND.c.campaign_id == bindparam("campaign_id"),
        SEND.c.user_id == bindparam("user_id"),
        SEND.c.variation_id == bindparam("variation_id"),
        or_(*(SEND.c.status == status for status in SENT)),  # not IN: no expanding parameter in an executemany
        SEND.c.key != bindparam("key"),
    )
    one, none, no_step = _const(1, BigInteger), _const("", String), _const(-1, Integer)

    def row(metric: str, ch: Any, st: Any, day: Any) -> Any:
        return select(c.campaign_id, c.cohort_hour, variation, ch, st, day, _const(metric, String), one)

    rows = union_all(
        row("sends", channel, step, _param("day", String)).where(*in_cohort),
        row(FAILED_METRIC, channel, step, none).where(*in_cohort, _param("failed", Integer) == 1),
        row(OPT_OUT_METRIC, channel, step, none).where(*in_cohort, _param("opted_out", Integer) == 1),
        row(MAYBE_DELIVERED_METRIC, channel, step, none).where(*in_cohort, _param("maybe_delivered", Integer) == 1),
        select(c.campaign_id, c.cohort_hour, none, none, no_step, _param("hour", String),
               _const(SENDS_HOUR_METRIC, String), one).where(*in_cohort),  # fmt: skip
        row("channel_users", channel, no_step, none).where(
            *in_cohort, ~exists().where(*other, SEND.c.channel == bindparam("channel"))
        ),
        row("step_users", none, step, none).where(
            *in_cohort, ~exists().where(*other, SEND.c.step_index == bindparam("step_index"))
        ),
    )
    ins = upsert_for(dialect_name, ROLLUP).from_select([*ROLLUP_KEY, "n"], rows)
    return ins.on_conflict_do_update(index_elements=ROLLUP_KEY, set_={"n": ROLLUP.c.n + ins.excluded.n})


def count_send(s: Session, send: Send, previous_status: str | None, *, opted_out: bool = False) -> None:
    """`send` just got its final status: count it if that status means a provider call was made.

    `opted_out`: the provider reported the recipient gone and Rejoin opted them out."""
    if send.status not in SENT or previous_status in SENT:
        return
    s.add(send)
    s.flush()  # the send's final status is written before its counters (same transaction)
    failed = send.status == FAILED
    count_sent(s, send, previous_status, failed=failed, opted_out=opted_out,
               possibly_delivered=failed and bool(send.possible_duplicate))  # fmt: skip


def count_sent(
    s: Session,
    send: SentMessage | Send,
    previous_status: str | None,
    *,
    failed: bool = False,
    opted_out: bool = False,
    possibly_delivered: bool = False,
) -> None:
    """`send`'s final status, one of SENT, is written: count it unless an earlier status was counted.

    `failed`: that status is `failed`; `opted_out`: and its recipient was reported gone;
    `possibly_delivered`: and it is flagged `possible_duplicate` (may have been delivered)."""
    if previous_status in SENT:
        return
    s.execute(_count_send_stmt(s), _send_facts(send, failed, opted_out, possibly_delivered))


def count_accepted(s: Session, sends: Sequence[SentMessage | Send]) -> None:
    """`count_sent` of sends just accepted, none counted before (their previous status was not
    final), in one statement for all: a batch's recipients (activities/broadcast_plain.py)."""
    if sends:  # in the counter rows' key order, as `register_cohorts`
        ordered = sorted(sends, key=lambda x: (x.campaign_id, x.variation_id, x.channel, x.step_index, x.key))
        s.execute(_count_send_stmt(s), [_send_facts(send, False, False, False) for send in ordered])


def _send_facts(send: SentMessage | Send, failed: bool, opted_out: bool, possibly_delivered: bool) -> dict[str, Any]:
    return {
        "campaign_id": send.campaign_id,
        "user_id": send.user_id,
        "created_at": send.created_at,
        "variation_id": send.variation_id,
        "channel": send.channel,
        "step_index": send.step_index,
        "day": day_of(send.created_at),
        "key": send.key,
        "failed": int(failed),
        "opted_out": int(failed and opted_out),
        "maybe_delivered": int(failed and possibly_delivered),
        "hour": hour_key_of(send.created_at),
    }


def count_hit(s: Session, hit: TrackingHit) -> None:
    """A human impression or click: flag it when it is its send's first of its kind
    (`first_of_send`, whoever's it is), then count it if it is a cohort user's, on or after their
    first trigger: every human hit (`impression`, `click`) and the send's first (`send_impression`,
    `send_click`: the opens and clicks reports show). The first click of an email send not yet
    opened also records and counts the open it implies (`implied_open`)."""
    if hit.bot:
        return
    with s.no_autoflush:  # the hit itself is not flushed yet (it is flagged below)
        lock_key(s, send_hits_lock_key(hit.send_key))
    hit.first_of_send = not _send_has_first(s, hit)
    _count_human_hit(s, hit)
    opened = implied_open(s, hit)
    if opened is not None:
        s.add(opened)
        _count_human_hit(s, opened)


def send_hits_lock_key(send_key: str) -> str:
    """The lock `count_hit` holds while it decides a human hit's `first_of_send` (and whether its
    click implies an open): one per send, for both kinds, so the human hits of one send recorded at
    once are flagged one after the other, each seeing the ones committed before it, and never
    collide on `ux_hit_send_first` (a burst of a reader's clicks and pixel loads lost clicks when
    the recorder's retry collided again). PostgreSQL (advisory lock, READ COMMITTED: the reads after
    it see what the previous holder committed); SQLite's transactions are serial already."""
    return f"hits/{send_key}"


def implied_open(s: Session, click: TrackingHit) -> TrackingHit | None:
    """The open a send's first human click implies, when the send is an email with no open yet.

    A hit like any other (source `implied`, at the click's time, flagged `first_of_send`), so the
    counters, the raw path and a rebuild count it alike, and the unique index `ux_hit_send_first`
    keeps one open per send: a real open afterwards is a repeat (totals only). The send's lock
    (`send_hits_lock_key`) makes a real open recorded at the same time commit before this check or
    wait for this transaction; should one still collide, the recorder records the click again."""
    if click.bot or click.kind != "click" or not click.first_of_send or click.channel not in IMPLIED_OPEN_CHANNELS:
        return None
    opened = TrackingHit(
        section_id=click.section_id, campaign_id=click.campaign_id, variation_id=click.variation_id,
        step_index=click.step_index, channel=click.channel, send_key=click.send_key, user_id=click.user_id,
        kind="impression", source=IMPLIED, bot=False, first_of_send=True, at=click.at,
    )  # fmt: skip
    return None if _send_has_first(s, opened) else opened


# The hit's user's cohort of the campaign, unless the hit's send is a test journey's: one query.
_HIT_COHORT = select(ReportCohort).where(
    col(ReportCohort.campaign_id) == bindparam("campaign_id"),
    col(ReportCohort.user_id) == bindparam("user_id"),
    ~sent_by_test_journey(bindparam("send_key")),
)


def _count_human_hit(s: Session, hit: TrackingHit) -> None:
    """Count a flagged human hit if it is a cohort user's, on or after their first trigger, and its
    send is no test journey's (a merge can give a test user a cohort: `of_test_journey`)."""
    params = {"campaign_id": hit.campaign_id, "user_id": hit.user_id, "send_key": hit.send_key}
    cohort = s.execute(_HIT_COHORT, params).scalars().first()
    if cohort is None or hit.at < cohort.first_at:
        return
    hour, v = cohort.cohort_hour, hit.variation_id
    bump(s, hit.campaign_id, hour, hit.kind, variation_id=v, channel=hit.channel, step_index=hit.step_index)
    if hit.first_of_send:
        bump(s, hit.campaign_id, hour, PER_SEND[hit.kind], variation_id=v, channel=hit.channel,
             step_index=hit.step_index)  # fmt: skip
    if hit.kind != "click":
        return
    s.add(hit)
    s.flush()  # gives the hit its id
    earlier = exists().where(
        col(TrackingHit.campaign_id) == hit.campaign_id,
        col(TrackingHit.user_id) == hit.user_id,
        col(TrackingHit.variation_id) == v,
        col(TrackingHit.kind) == "click",
        col(TrackingHit.bot).is_(False),
        col(TrackingHit.at) >= cohort.first_at,
        col(TrackingHit.id) != hit.id,
    )
    if not s.execute(select(earlier)).scalar():
        bump(s, hit.campaign_id, hour, "click_users", variation_id=v)


def _send_has_first(s: Session, hit: TrackingHit) -> bool:
    """Whether the hit's send already has its first human hit of this kind (on `ux_hit_send_first`).

    Called under the send's lock (`count_hit`), so two hits of one send recorded at once do not
    both find none; the unique index still refuses a second first (the recorder then retries,
    api/routes/tracking.py `record_hit`)."""
    with s.no_autoflush:  # the hit itself is not flushed yet: it never finds itself
        query = select(literal(1)).where(
            col(TrackingHit.send_key) == hit.send_key, col(TrackingHit.kind) == hit.kind, FIRST_OF_SEND
        )
        return s.execute(query.limit(1)).first() is not None


def attributes(kind: str) -> bool:
    """Whether events of this kind can be attributed to a campaign (purchases, add-to-carts)."""
    return kind in ATTRIBUTED_KINDS


# The user's cohorts with the clicks that can claim an event received at `received_at` (human
# clicks of the cohort's campaign since the person entered it), newest first per campaign. One
# round trip for all of a buyer's campaigns, on `ix_hit_user` (section, user, time): by campaign
# alone, a busy campaign's clicks would be scanned for every identified add-to-cart.
_LAST_CLICKS = (
    select(col(ReportCohort.campaign_id), col(ReportCohort.cohort_hour), TrackingHit)
    .join(
        TrackingHit,
        and_(
            col(TrackingHit.section_id) == bindparam("section_id"),
            col(TrackingHit.user_id) == col(ReportCohort.user_id),
            col(TrackingHit.campaign_id) == col(ReportCohort.campaign_id),
            col(TrackingHit.kind) == "click",
            col(TrackingHit.bot).is_(False),
            col(TrackingHit.at) >= col(ReportCohort.first_at),
            col(TrackingHit.at) <= bindparam("received_at", type_=TrackingHit.__table__.c.at.type),  # type: ignore[attr-defined]
            ~sent_by_test_journey(col(TrackingHit.send_key)),  # a test journey's click claims nothing
        ),
    )
    .where(col(ReportCohort.user_id) == bindparam("user_id"))
    .order_by(col(ReportCohort.campaign_id), col(TrackingHit.at).desc())
)


# The user's cohorts a purchase received at `received_at` may convert in: first enrolled before
# it, at most MAX_CONVERSION_LAG before (on `ix_report_cohort_user`).
_ENROLLED = select(COHORT.c.campaign_id, COHORT.c.cohort_hour, COHORT.c.variation_id, COHORT.c.first_at).where(
    COHORT.c.user_id == bindparam("user_id"),
    COHORT.c.first_at < bindparam("received_at", type_=COHORT.c.first_at.type),
    COHORT.c.first_at >= bindparam("earliest", type_=COHORT.c.first_at.type),
)


def attribute_event(s: Session, event: Event, *, identified: bool) -> None:
    """Store a purchase/add-to-cart against each campaign whose click by this user precedes it,
    and a purchase as an enrolled-user conversion of each campaign the user was enrolled in.

    The window and the transaction dedupe are applied when the report is read, so this keeps
    the candidate (the last human click before the event, per campaign) and nothing more. A
    repeat of a transaction the user already sent (same kind and transaction id, earlier by
    time, id) is no candidate: the first event decided, even when it came before any click and
    so counted for nothing (docs/reports.md). The user is the event's user now: after an
    identity merge the merged person's earlier events are theirs too. Click attribution needs
    the buyer `identified`; an enrolled-user conversion does not (it is the enrolled user's own
    purchase, whichever arm: `count_conversion`).
    """
    if event.kind not in ATTRIBUTED_KINDS or (not identified and event.kind != "purchase"):
        return
    if event.transaction_id is not None:
        repeat = earlier_event_of_transaction(
            event.section_id, event.user_id, event.kind, event.transaction_id, event.received_at, event.id
        )
        if s.execute(select(repeat)).scalar():
            return
    if event.kind == "purchase":
        count_conversion(s, event)
    if not identified:
        return
    rows = s.execute(
        _LAST_CLICKS, {"section_id": event.section_id, "user_id": event.user_id, "received_at": event.received_at}
    ).all()
    seen: set[str] = set()
    for cohort_campaign, cohort_hour, last in rows:
        if cohort_campaign in seen:
            continue  # rows come newest click first per campaign: the first is the candidate
        seen.add(cohort_campaign)
        ins = upsert_base(s, ATTRIBUTION).values(
            campaign_id=cohort_campaign,
            event_id=event.id,
            user_id=event.user_id,
            cohort_hour=cohort_hour,
            kind=event.kind,
            value=finite_value(event.value),
            transaction_id=event.transaction_id,
            at=event.received_at,
            click_at=last.at,
            lag_us=(event.received_at - last.at) // timedelta(microseconds=1),
            variation_id=last.variation_id,
            channel=last.channel,
            step_index=last.step_index,
            currency=event_currency(event.data),
        )
        s.execute(ins.on_conflict_do_nothing(index_elements=["campaign_id", "event_id"]))


def count_conversion(s: Session, event: Event) -> None:
    """A purchase (not a repeat of a transaction): one conversion row per campaign the buyer was
    first enrolled in before it, within MAX_CONVERSION_LAG, under the arm of that enrollment."""
    params = {"user_id": event.user_id, "received_at": event.received_at,
              "earliest": event.received_at - MAX_CONVERSION_LAG}  # fmt: skip
    for campaign_id, cohort_hour, variation_id, first_at in s.execute(_ENROLLED, params).all():
        ins = upsert_base(s, CONVERSION).values(
            campaign_id=campaign_id,
            event_id=event.id,
            user_id=event.user_id,
            cohort_hour=cohort_hour,
            variation_id=variation_id,
            value=finite_value(event.value),
            currency=event_currency(event.data),
            at=event.received_at,
            lag_us=(event.received_at - first_at) // timedelta(microseconds=1),
        )
        s.execute(ins.on_conflict_do_nothing(index_elements=["campaign_id", "event_id"]))


def count_conversions_after_enrollment(
    s: Session, section_id: str, user_ids: Sequence[str], event_ids: Sequence[str]
) -> None:
    """Enrolled-user conversions of purchases (`event_ids`) that came in the same ingestion request
    as, and after, a trigger that enrolled their buyer: `count_conversion` ran at each purchase,
    before the request's cohorts were registered (api/ingestion.py writes enrollments last), so
    it missed them. Called once the enrollments are written, with the enrolled users: the raw
    rule (`conversion_candidates`, the rebuild's and the raw report's) over these events and the
    users' cohorts, read in the database, so merged-away buyers (events re-pointed mid-request)
    and repeats of a transaction are as the raw path sees them; rows already stored stay."""
    if not user_ids or not event_ids:
        return
    c = COHORT.c
    mine = COHORT.select().where(c.user_id.in_(list(set(user_ids)))).subquery()
    found = (
        conversion_candidates(s, section_id, mine, mine.c.user_id, mine.c.first_at)
        .add_columns(mine.c.campaign_id, mine.c.cohort_hour, mine.c.variation_id)
        .subquery()
    )
    x = found.c
    rows = select(x.campaign_id, x.event_id, x.user_id, x.cohort_hour, x.variation_id, x.value, x.currency, x.at,
                  x.lag_us).where(x.event_id.in_(list(event_ids)))  # fmt: skip
    cols = ["campaign_id", "event_id", "user_id", "cohort_hour", "variation_id", "value", "currency", "at", "lag_us"]
    ins = upsert_base(s, CONVERSION).from_select(cols, rows)
    s.execute(ins.on_conflict_do_nothing(index_elements=["campaign_id", "event_id"]))


# ------------------------------------------------------------------ rebuild from raw tables


def rebuild(s: Session, campaign_ids: Sequence[str] | None = None) -> int:
    """Recompute cohorts, counters and attributions of these campaigns (all: None) from raw rows.

    Returns the number of campaigns rebuilt. On PostgreSQL the counter table is locked for the
    transaction so live increments wait instead of being lost in between.
    """
    if dialect(s) == "postgresql":
        s.execute(select(literal(1)))  # begin before locking
        s.connection().exec_driver_sql((
            "LOCK TABLE report_rollup, report_cohort, report_attribution, report_conversion IN EXCLUSIVE MODE"
        ))
    if campaign_ids is None:
        campaign_ids = list(s.execute(select(col(Journey.campaign_id)).distinct()).scalars().all())
    for cid in campaign_ids:
        for table in (ROLLUP, COHORT):
            s.execute(delete(table).where(table.c.campaign_id == cid))
        # An attribution (conversion) whose event retention purged cannot be computed again: it
        # stays (the report's purchases and revenue outlive the raw events, docs/reports.md).
        for derived in (ATTRIBUTION, CONVERSION):
            still_raw = exists().where(EVENT.c.id == derived.c.event_id)
            s.execute(delete(derived).where(derived.c.campaign_id == cid, still_raw))
        _rebuild_cohorts(s, cid)
        _rebuild_counters(s, cid)
        _rebuild_attributions(s, cid)
        _rebuild_conversions(s, cid)
    return len(campaign_ids)


def forget_users(s: Session, user_ids: Sequence[str]) -> list[str]:
    """Before an identity merge re-points these users' rows: take out all they contributed.

    Returns the campaigns they had cohorts in, for `recount_users` after the merge.
    """
    cids = list(s.execute(select(COHORT.c.campaign_id).where(COHORT.c.user_id.in_(user_ids)).distinct()).scalars())
    for cid in cids:
        _rebuild_counters(s, cid, user_ids, sign=-1)
        for table in (COHORT, ATTRIBUTION, CONVERSION):
            s.execute(delete(table).where(table.c.campaign_id == cid, table.c.user_id.in_(user_ids)))
    return cids


def recount_users(s: Session, user_ids: Sequence[str], campaign_ids: Sequence[str]) -> None:
    """After an identity merge: count the (now merged) users again from their raw rows."""
    for cid in campaign_ids:
        _rebuild_cohorts(s, cid, user_ids)
        _rebuild_counters(s, cid, user_ids)
        _rebuild_attributions(s, cid, user_ids)
        _rebuild_conversions(s, cid, user_ids)


def rebuild_if_empty(s: Session) -> int:
    """Startup migration: raw data but no pre-aggregation yet (a deployment from before it)."""
    if s.execute(select(literal(1)).select_from(COHORT).limit(1)).first() is not None:
        return 0
    has_journeys = s.execute(select(literal(1)).select_from(Journey).where(col(Journey.is_test).is_(False)).limit(1))
    if has_journeys.first() is None:
        return 0
    n = rebuild(s)
    log.info("report pre-aggregation rebuilt for %d campaigns", n)
    return n


# Start-up data migrations run once per database, whichever process is first (under the schema
# lock): each rebuilds the campaigns it concerns, then writes its marker, a counter row of no
# campaign named by its metric (the counter table's 16 characters at most).
_MIGRATION_MARKER = {
    "campaign_id": "", "cohort_hour": datetime(1970, 1, 1, tzinfo=UTC), "variation_id": "", "channel": "",
    "step_index": -1, "day": "", "n": 1,
}  # fmt: skip
# The failure counters came after sends had failed: campaigns with failed sends.
_FAILURES = ("migrated_failed", select(col(Send.campaign_id)).where(col(Send.status) == FAILED).distinct())
# Attributions stored before their `currency` column have none (read as "sent without one"):
# campaigns with attributed purchases. One whose event retention already purged keeps none.
_CURRENCIES = (
    "migrated_ccy",
    select(ATTRIBUTION.c.campaign_id).where(ATTRIBUTION.c.kind == "purchase").distinct(),
)
# Opens and clicks per send (`first_of_send`) and privacy-proxy opens came after hits were
# recorded: the stored hits are first brought in line with the write path (`flag_stored_hits`),
# then the campaigns with hits are rebuilt.
_PER_SEND_HITS = ("migrated_opens", select(col(TrackingHit.campaign_id)).distinct())
# Implied opens came after sends had been clicked without an open: those opens are recorded
# (`imply_stored_opens`), then the campaigns that got one are rebuilt.
IMPLIED_MARKER = "migrated_implied"
_IMPLIED_OPENS = (
    IMPLIED_MARKER,
    select(col(TrackingHit.campaign_id)).where(col(TrackingHit.source) == IMPLIED).distinct(),
)
# Enrolled-user conversions (the holdout comparison), possibly delivered sends and hourly send
# counters came after campaigns had enrolled users: campaigns with cohorts.
_ENROLLED_CONVERSIONS = ("migrated_enroll", select(COHORT.c.campaign_id).distinct())
MIGRATIONS = (_FAILURES, _CURRENCIES, _PER_SEND_HITS, _IMPLIED_OPENS, _ENROLLED_CONVERSIONS)


def migrate_reports(s: Session) -> int:
    """Startup: a deployment from before the pre-aggregation is rebuilt whole (`rebuild_if_empty`),
    then every migration not yet run in one rebuild, so a campaign several concern (or that was
    just rebuilt whole) is rebuilt once. Returns the number of campaigns rebuilt. Raw hits are
    corrected before anything is rebuilt from them."""
    if not _ran(s, _PER_SEND_HITS[0]):
        flag_stored_hits(s)
    if not _ran(s, IMPLIED_MARKER):  # after the flags: it reads the sends' first clicks and opens
        imply_stored_opens(s)
    whole = rebuild_if_empty(s)
    return whole + _rebuild_once(s, MIGRATIONS, rebuilt=whole > 0)


def _rebuild_once(s: Session, migrations: Sequence[tuple[str, Any]], *, rebuilt: bool = False) -> int:
    """Rebuild the campaigns the migrations not yet run select (their queries of campaign ids),
    each once, unless `rebuilt` (everything was just rebuilt); then mark those migrations run."""
    pending = [(marker, campaigns) for marker, campaigns in migrations if not _ran(s, marker)]
    campaign_ids: set[str] = set()
    for _, campaigns in [] if rebuilt else pending:
        campaign_ids.update(s.execute(campaigns).scalars().all())
    n = rebuild(s, sorted(campaign_ids)) if campaign_ids else 0
    for marker, _ in pending:
        s.execute(ROLLUP.insert().values(**_MIGRATION_MARKER, metric=marker))
    if n:
        log.info("reports rebuilt for %d campaigns (%s)", n, ", ".join(m for m, _ in pending))
    return n


def _ran(s: Session, marker: str) -> bool:
    done = select(literal(1)).select_from(ROLLUP).where(ROLLUP.c.campaign_id == "", ROLLUP.c.metric == marker)
    return s.execute(done.limit(1)).first() is not None


def flag_stored_hits(s: Session) -> None:
    """Bring hits recorded before opens were counted per send in line with `count_hit`, set-based.

    Opens a mail privacy proxy prefetched (pixel GETs named only "Mozilla/5.0") become bot hits
    (`privacy_proxy`), as `domain.tracking.bot_reason` now records them; then the first human hit
    (lowest id) of each kind on each send not yet having one is flagged `first_of_send`. One
    grouped pass over the hits (no per-row lookup), once per database."""
    hit = table_of(TrackingHit).c
    proxied = (
        hit.kind == "impression",
        hit.bot.is_(False),
        hit.source.in_(PROXIED_SOURCES),
        func.trim(hit.user_agent) == PRIVACY_PROXY_AGENT,
    )
    values = {"bot": True, "bot_reason": "privacy_proxy", "first_of_send": False}
    proxies = s.execute(update(TrackingHit).where(*proxied).values(values)).rowcount  # type: ignore[attr-defined]
    flagged = case((hit.first_of_send.is_(True), 1), else_=0)
    firsts = (
        select(func.min(hit.id))
        .where(hit.bot.is_(False))
        .group_by(hit.send_key, hit.kind)
        .having(func.max(flagged) == 0)
    )
    flag = update(TrackingHit).where(hit.id.in_(firsts)).values(first_of_send=True)
    flags = s.execute(flag).rowcount  # type: ignore[attr-defined]
    if proxies or flags:
        log.info("stored hits: %d privacy-proxy opens set apart, %d first hits of a send flagged", proxies, flags)


def imply_stored_opens(s: Session) -> int:
    """Record the open each stored first human click of an email send without one implies, as
    `implied_open` now does when the click arrives: one INSERT ... SELECT over the clicks, once per
    database. Returns the number of opens recorded."""
    hit = table_of(TrackingHit).c
    opened = table_of(TrackingHit).alias("opened")
    has_open = exists().where(
        opened.c.send_key == hit.send_key, opened.c.kind == "impression", opened.c.first_of_send == True  # noqa: E712
    )  # the form of `ux_hit_send_first`'s predicate, so planners use it
    cols = ["section_id", "campaign_id", "variation_id", "step_index", "channel", "send_key", "user_id", "kind",
            "source", "bot", "first_of_send", "at"]  # fmt: skip
    rows = select(
        hit.section_id, hit.campaign_id, hit.variation_id, hit.step_index, hit.channel, hit.send_key, hit.user_id,
        _const("impression", String), _const(IMPLIED, String), _const(False, Boolean), _const(True, Boolean), hit.at,
    ).where(
        hit.kind == "click", hit.first_of_send == True, hit.bot.is_(False),  # noqa: E712
        hit.channel.in_(IMPLIED_OPEN_CHANNELS), ~has_open,
    )  # fmt: skip
    # preserve_rowcount: SQLAlchemy reports -1 for an INSERT ... SELECT on psycopg otherwise.
    ins = insert(table_of(TrackingHit)).from_select(cols, rows).execution_options(preserve_rowcount=True)
    n = int(s.execute(ins).rowcount)  # type: ignore[attr-defined]
    if n:
        log.info("stored hits: %d opens implied by clicks of email sends without one", n)
    return n


def count_old_failures_once(s: Session) -> int:
    """The failure-counter migration alone (`migrate_reports` runs it with the others)."""
    return _rebuild_once(s, [_FAILURES])


def fill_attribution_currency_once(s: Session) -> int:
    """The attribution-currency migration alone (`migrate_reports` runs it with the others)."""
    return _rebuild_once(s, [_CURRENCIES])


def _rebuild_cohorts(s: Session, cid: str, users: Sequence[str] | None = None) -> None:
    live = (
        col(Journey.campaign_id) == cid,
        col(Journey.is_test).is_(False),
        *([col(Journey.user_id).in_(users)] if users is not None else []),
    )
    first = (
        select(col(Journey.user_id).label("user_id"), func.min(col(Journey.triggered_at)).label("first_at"))
        .where(*live)
        .group_by(col(Journey.user_id))
        .subquery()
    )
    rows = (
        select(
            literal(cid),
            first.c.user_id,
            first.c.first_at,
            hour_sql(s, first.c.first_at),
            func.min(col(Journey.variation_id)),
        )
        .join_from(
            first, Journey, (col(Journey.user_id) == first.c.user_id) & (col(Journey.triggered_at) == first.c.first_at)
        )
        .where(*live)
        .group_by(first.c.user_id, first.c.first_at)
    )
    s.execute(insert(COHORT).from_select(["campaign_id", "user_id", "first_at", "cohort_hour", "variation_id"], rows))


def _counter_rows(s: Session, cid: str, metric: Any, hour: Any, dims: list[Any], n: Any, frm: Any, *where: Any) -> None:
    """INSERT INTO report_rollup SELECT cid, hour, variation, channel, step, day, metric, n ... GROUP BY (UPSERT)."""
    variation, channel, step, day = dims
    grouped = [x for x in (hour, variation, channel, step, day) if not _is_literal(x)]
    if not _is_literal(metric):
        grouped.append(metric)
    rows = (
        select(literal(cid), hour, variation, channel, step, day, metric, n)
        .select_from(frm)
        .where(*where)
        .group_by(*grouped)
    )
    ins = upsert_base(s, ROLLUP).from_select([*ROLLUP_KEY, "n"], rows)
    s.execute(ins.on_conflict_do_update(index_elements=ROLLUP_KEY, set_={"n": ROLLUP.c.n + ins.excluded.n}))


def _is_literal(x: Any) -> bool:
    return isinstance(x, BindParameter)  # a constant dimension: not grouped by


def _rebuild_counters(s: Session, cid: str, users: Sequence[str] | None = None, sign: int = 1) -> None:
    """Every counter of the campaign (of these users only: None = all), times `sign`."""
    c = COHORT.c
    mine = (c.campaign_id == cid, *([c.user_id.in_(users)] if users is not None else []))
    count = func.count() * sign

    def distinct(x: Any) -> Any:
        return func.count(func.distinct(x)) * sign

    _counter_rows(
        s,
        cid,
        literal("users"),
        c.cohort_hour,
        [c.variation_id, literal(""), literal(-1), literal("")],
        count,
        COHORT,
        *mine,
    )
    sends = COHORT.join(Send, (col(Send.campaign_id) == c.campaign_id) & (col(Send.user_id) == c.user_id))
    sent = (*mine, col(Send.status).in_(SENT), col(Send.created_at) >= c.first_at,
            ~of_test_journey(col(Send.journey_id)))  # fmt: skip
    v, ch, st = col(Send.variation_id), col(Send.channel), col(Send.step_index)
    sent_users = distinct(col(Send.user_id))
    _counter_rows(
        s, cid, literal("sends"), c.cohort_hour, [v, ch, st, day_sql(s, col(Send.created_at))], count, sends, *sent
    )
    failed = (*sent, col(Send.status) == FAILED)
    no_day = literal("")
    _counter_rows(s, cid, literal(FAILED_METRIC), c.cohort_hour, [v, ch, st, no_day], count, sends, *failed)
    opted_out = provider_opted_out(col(Send.key))
    _counter_rows(s, cid, literal(OPT_OUT_METRIC), c.cohort_hour, [v, ch, st, no_day], count, sends, *failed, opted_out)
    maybe = col(Send.possible_duplicate).is_(True)
    _counter_rows(s, cid, literal(MAYBE_DELIVERED_METRIC), c.cohort_hour, [v, ch, st, no_day], count, sends, *failed,
                  maybe)  # fmt: skip
    by_hour = [literal(""), literal(""), literal(-1), hour_key_sql(s, col(Send.created_at))]
    _counter_rows(s, cid, literal(SENDS_HOUR_METRIC), c.cohort_hour, by_hour, count, sends, *sent)
    _counter_rows(
        s, cid, literal("channel_users"), c.cohort_hour, [v, ch, literal(-1), literal("")], sent_users, sends, *sent
    )
    _counter_rows(
        s, cid, literal("step_users"), c.cohort_hour, [v, literal(""), st, literal("")], sent_users, sends, *sent
    )
    hits = COHORT.join(
        TrackingHit, (col(TrackingHit.campaign_id) == c.campaign_id) & (col(TrackingHit.user_id) == c.user_id)
    )
    human = (*mine, col(TrackingHit.bot).is_(False), col(TrackingHit.at) >= c.first_at,
             ~sent_by_test_journey(col(TrackingHit.send_key)))  # fmt: skip
    hv, hch, hst = col(TrackingHit.variation_id), col(TrackingHit.channel), col(TrackingHit.step_index)
    _counter_rows(s, cid, col(TrackingHit.kind), c.cohort_hour, [hv, hch, hst, literal("")], count, hits, *human)
    for kind, metric in PER_SEND.items():  # opened / clicked sends: their flagged first human hit
        first = (*human, col(TrackingHit.kind) == kind, FIRST_OF_SEND)
        _counter_rows(s, cid, literal(metric), c.cohort_hour, [hv, hch, hst, literal("")], count, hits, *first)
    _counter_rows(
        s,
        cid,
        literal("click_users"),
        c.cohort_hour,
        [hv, literal(""), literal(-1), literal("")],
        distinct(col(TrackingHit.user_id)),
        hits,
        *human,
        col(TrackingHit.kind) == "click",
    )


def conversion_candidates(s: Session, section_id: Any, enrolled: Any, user_id: Any, first_at: Any) -> Any:
    """The raw purchases that are enrolled-user conversions of the users of `enrolled` (a FROM
    clause with those columns): by the user, after `first_at`, within MAX_CONVERSION_LAG, first
    events of their transaction. Columns: event_id, user_id, at, value, currency, lag_us. The
    rebuild and the raw report path (store/reports.py) both read them: one rule."""
    purchase = EVENT.alias("purchase")  # not EVENT: the EXISTS below reads EVENT uncorrelated
    e = purchase.c
    lag = lag_us_sql(s, e.received_at, first_at)
    return (
        select(e.id.label("event_id"), e.user_id.label("user_id"), e.received_at.label("at"),
               finite_value_sql(e.value).label("value"), currency_sql(e.data).label("currency"), lag.label("lag_us"))
        .select_from(enrolled)
        .join(purchase, (e.user_id == user_id) & (e.section_id == section_id))
        .where(e.kind == "purchase", e.received_at > first_at,
               lag <= MAX_CONVERSION_LAG // timedelta(microseconds=1),
               ~earlier_event_of_transaction(e.section_id, e.user_id, e.kind, e.transaction_id, e.received_at, e.id))
    )  # fmt: skip


def _rebuild_conversions(s: Session, cid: str, users: Sequence[str] | None = None) -> None:
    """The campaign's enrolled-user conversions (of these users only: None = all) from raw events."""
    section_id = s.execute(select(col(Campaign.section_id)).where(col(Campaign.id) == cid)).scalar()
    if section_id is None:
        return
    c = COHORT.c
    mine = COHORT.select().where(c.campaign_id == cid, *([c.user_id.in_(users)] if users is not None else []))
    cohorts = mine.subquery()
    found = conversion_candidates(s, section_id, cohorts, cohorts.c.user_id, cohorts.c.first_at).add_columns(
        cohorts.c.cohort_hour, cohorts.c.variation_id
    ).subquery()
    x = found.c
    # The WHERE: SQLite reads "SELECT ... FROM (...) ON CONFLICT" as a join's ON without one.
    rows = select(literal(cid), x.event_id, x.user_id, x.cohort_hour, x.variation_id, x.value, x.currency, x.at,
                  x.lag_us).where(x.event_id.is_not(None))  # fmt: skip
    cols = ["campaign_id", "event_id", "user_id", "cohort_hour", "variation_id", "value", "currency", "at", "lag_us"]
    ins = upsert_base(s, CONVERSION).from_select(cols, rows)
    s.execute(ins.on_conflict_do_nothing(index_elements=["campaign_id", "event_id"]))


def _rebuild_attributions(s: Session, cid: str, users: Sequence[str] | None = None) -> None:
    section_id = s.execute(select(col(Campaign.section_id)).where(col(Campaign.id) == cid)).scalar()
    if section_id is None:
        return
    c = COHORT.c
    click = (
        col(TrackingHit.campaign_id) == cid,
        col(TrackingHit.user_id) == col(Event.user_id),
        col(TrackingHit.kind) == "click",
        col(TrackingHit.bot).is_(False),
        col(TrackingHit.at) >= c.first_at,
        col(TrackingHit.at) <= col(Event.received_at),
        ~sent_by_test_journey(col(TrackingHit.send_key)),
    )
    last_click = select(func.max(col(TrackingHit.at))).where(*click).correlate(Event, COHORT).scalar_subquery()
    candidates = (
        select(
            col(Event.id).label("event_id"),
            col(Event.user_id).label("user_id"),
            c.cohort_hour,
            col(Event.kind).label("kind"),
            finite_value_sql(col(Event.value)).label("value"),
            col(Event.transaction_id).label("transaction_id"),
            col(Event.received_at).label("at"),
            last_click.label("click_at"),
            currency_sql(col(Event.data)).label("currency"),
        )
        .join_from(Event, COHORT, (c.campaign_id == cid) & (c.user_id == col(Event.user_id)))
        .join(User, col(User.id) == col(Event.user_id))
        .where(
            col(Event.section_id) == section_id,
            col(Event.kind).in_(ATTRIBUTED_KINDS),
            identified_sql(),
            *([col(Event.user_id).in_(users)] if users is not None else []),
        )
        .subquery()
    )
    x = candidates.c
    rows = (
        select(
            literal(cid),
            x.event_id,
            x.user_id,
            x.cohort_hour,
            x.kind,
            x.value,
            x.transaction_id,
            x.at,
            x.click_at,
            lag_us_sql(s, x.at, x.click_at),
            col(TrackingHit.variation_id),
            col(TrackingHit.channel),
            col(TrackingHit.step_index),
            x.currency,
        )
        .join_from(
            candidates,
            TrackingHit,
            (col(TrackingHit.campaign_id) == cid)
            & (col(TrackingHit.user_id) == x.user_id)
            & (col(TrackingHit.at) == x.click_at)
            & (col(TrackingHit.kind) == "click")
            & col(TrackingHit.bot).is_(False)
            & ~sent_by_test_journey(col(TrackingHit.send_key)),
        )
        .where(x.click_at.is_not(None))
    )
    cols = [
        "campaign_id",
        "event_id",
        "user_id",
        "cohort_hour",
        "kind",
        "value",
        "transaction_id",
        "at",
        "click_at",
        "lag_us",
        "variation_id",
        "channel",
        "step_index",
        "currency",
    ]
    # Two clicks at the same instant: keep one (the raw path's choice between them is arbitrary too).
    s.execute(
        upsert_base(s, ATTRIBUTION)
        .from_select(cols, rows)
        .on_conflict_do_nothing(index_elements=["campaign_id", "event_id"])
    )
