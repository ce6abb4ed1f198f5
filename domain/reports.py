"""Campaign report maths: attribution, aggregation, normalization, Bayesian winner. Pure.

Rules (docs/reports.md explains them with examples):
- Attribution starts at a human click. A purchase (or add-to-cart) by an identified user is
  attributed to that user's last click before it, if it happened within the campaign's
  attribution window after that click. Each purchase is attributed at most once (purchases
  are deduplicated by transaction id), to the variation/step/channel of that last click.
- Variation metrics are normalized per unique user allocated to the variation; channel and
  step metrics per unique user actually sent on that channel / at that step. CTR is
  clicks / impressions on email only, never normalized.
- Impressions and clicks count sends: a send opened (clicked) by a human, however many times,
  is one impression (click). Every human hit is counted too, as total_impressions and
  total_clicks. So CTR is clicked sends / opened sends and a reloaded pixel moves neither.
- Click attribution cannot measure a holdout (it is sent nothing to click), so arms are compared
  with the holdout on enrolled-user conversions instead: every purchase a user makes within the
  attribution window after their first enrollment counts for the arm of that enrollment, the
  holdout's included (`holdout_comparison`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

METRICS = (
    "send_requests", "failed_sends", "provider_opt_outs", "impressions", "clicks", "purchases", "revenue",
    "add_to_carts", "total_impressions", "total_clicks", "possibly_delivered",
)  # fmt: skip
HIT_METRICS = {"impression": ("impressions", "total_impressions"), "click": ("clicks", "total_clicks")}
MIN_USERS = 100  # per compared variation, before a winner may be declared
MIN_CONVERSIONS = 10  # converting users over all compared variations
WIN_PROBABILITY = 0.95
DRAWS = 20_000
SEED = 20_240_601  # fixed: the same data always gives the same report
NO_CURRENCY = "none"  # the currency key of purchases sent without one (codes are upper case: no clash)


@dataclass(frozen=True)
class Click:
    user_id: str
    variation_id: str
    step_index: int
    channel: str
    at: datetime


@dataclass(frozen=True)
class SiteEvent:
    """A purchase or add-to-cart on the site."""

    id: str
    user_id: str
    kind: Literal["purchase", "add_to_cart"]
    at: datetime
    value: float = 0.0
    transaction_id: str | None = None
    identified: bool = True


@dataclass(frozen=True)
class Attributed:
    event: SiteEvent
    click: Click


def attribute(clicks: Iterable[Click], events: Iterable[SiteEvent], window: timedelta) -> list[Attributed]:
    """Each identified user's purchase/add-to-cart -> the last click before it within the window."""
    by_user: dict[str, list[Click]] = defaultdict(list)
    for c in clicks:
        by_user[c.user_id].append(c)
    for cs in by_user.values():
        cs.sort(key=lambda c: c.at)
    out: list[Attributed] = []
    for e in first_of_each_transaction(events):
        if not e.identified:
            continue  # attribution needs the user identified when buying
        last = None
        for c in by_user.get(e.user_id, ()):
            if c.at > e.at:
                break
            last = c
        if last is None or e.at - last.at > window:
            continue
        out.append(Attributed(e, last))
    return out


def first_of_each_transaction(events: Iterable[SiteEvent]) -> list[SiteEvent]:
    """The first event (by time, id) per (kind, user, transaction id), in that order.

    The first one decides, attributed or not: a purchase sent before any click and sent again
    (same uniqueTransactionId) after one must not count, so repeats are dropped before
    attribution, never after. Events without a transaction id are each their own. The user is
    the one the event belongs to now (an identity merge re-points a device's events to the
    merged person, whose first event of the transaction then decides).
    """
    seen: set[tuple[str, str, str]] = set()
    first: list[SiteEvent] = []
    for e in sorted(events, key=lambda e: (e.at, e.id)):
        key = (e.kind, e.user_id, e.transaction_id) if e.transaction_id else (e.kind, "id", e.id)
        if key not in seen:
            seen.add(key)
            first.append(e)
    return first


@dataclass
class Bucket:
    """Raw counts for a group of users; `users` is the normalization denominator."""

    users: int = 0
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))
    email_impressions: float = 0.0
    email_clicks: float = 0.0
    converters: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # users with >= 1 event
    revenue_sumsq: float = 0.0  # sum over users of (their revenue)^2, for the revenue posterior
    enrolled: Enrolled | None = None  # variations only: their enrolled-user conversions

    def enrolled_currencies(self) -> set[str]:
        return self.enrolled.currencies() if self.enrolled is not None else set()

    def table(self) -> dict[str, Any]:
        n = self.users
        extra = {"enrolled_conversions": self.enrolled.table(n)} if self.enrolled is not None else {}
        return {
            "users": n,
            "metrics": {
                m: {"count": _num(self.counts[m]), "per_user": _per_user(m, self.counts[m], n)} for m in METRICS
            },
            "ctr": (self.email_clicks / self.email_impressions) if self.email_impressions else None,
            # Users with at least one attributed purchase, and their share of the users: purchases'
            # `per_user` counts a person's second order again.
            "buyers": self.converters["purchases"],
            "conversion_rate": (min(self.converters["purchases"], n) / n) if n else None,
            **extra,
        }


@dataclass
class Enrolled:
    """A variation's enrolled-user conversions: its users' purchases within the attribution window
    after their first enrollment, whether or not anything was sent or clicked (a holdout's too).

    Currencies follow the click-attributed revenue's rule (docs/reports.md, "Revenue and
    currencies"): `revenue` adds up what the report currency lets in (every value when none is
    set), `revenue_by_currency` says what it is made of, `revenue_other_currencies` keeps apart
    the values of purchases in another currency (they still convert, with 0 revenue)."""

    purchases: int = 0
    buyers: int = 0  # users with at least one
    revenue: float = 0.0
    revenue_sumsq: float = 0.0  # sum over buyers of (their revenue)^2, for the revenue posterior
    revenue_by_currency: dict[str, float] = field(default_factory=dict)  # currency key -> value in revenue
    revenue_other_currencies: dict[str, float] = field(default_factory=dict)  # currency key -> value kept out

    def add_value(self, currency: str, value: float, counted: bool) -> None:
        values = self.revenue_by_currency if counted else self.revenue_other_currencies
        values[currency] = values.get(currency, 0.0) + value

    def currencies(self) -> set[str]:
        """The named currencies `revenue` adds up (purchases without one are no currency of their own)."""
        return {cur for cur in self.revenue_by_currency if cur != NO_CURRENCY}

    def table(self, users: int) -> dict[str, Any]:
        return {
            "purchases": self.purchases,
            "buyers": self.buyers,
            "conversion_rate": (min(self.buyers, users) / users) if users else None,
            "revenue": money(self.revenue),
            "revenue_per_user": money_per_user(self.revenue, users),
            "revenue_by_currency": {c: money(v) for c, v in sorted(self.revenue_by_currency.items())},
            "revenue_other_currencies": {c: money(v) for c, v in sorted(self.revenue_other_currencies.items())},
        }


@dataclass(frozen=True)
class Conversion:
    """A purchase after its buyer's first enrollment (raw path): `lag` after it, for the window.

    `value` is the purchase's own; `counted`: whether revenue adds it (the report currency's
    rule), else it converts with 0 revenue and its value is kept apart under `currency`."""

    event_id: str
    user_id: str
    variation_id: str
    lag: timedelta
    value: float
    currency: str = NO_CURRENCY  # the currency key (NO_CURRENCY: sent without one)
    counted: bool = True


@dataclass(frozen=True)
class ConversionGroup:
    """Enrolled-user conversions of one variation, windowed and summed in SQL (whole cohort hours)."""

    variation_id: str
    purchases: int
    buyers: int
    revenue: float
    revenue_sumsq: float


@dataclass(frozen=True)
class ConversionCurrencyGroup:
    """Enrolled-user conversions' value of one variation and currency key, windowed and summed in
    SQL; `counted`: whether revenue adds it (else it is kept apart)."""

    variation_id: str
    currency: str
    counted: bool
    value: float


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else money(v)


def money(value: float) -> float:
    """A money figure to the cent, half a cent rounded up (away from zero): sums of float values
    carry noise (22315.120000000003), and at half a cent the noise decided. Five purchases of 33.333
    summed to 1440.595 in one order and 1440.5949999999998 in another, so the same revenue read 1440.6
    over the default range and 1440.59 over whole hours. Cut to 6 decimals first (far below any
    currency's unit, far above the noise), then rounded in decimal."""
    if not math.isfinite(value):
        return float(value)
    exact = Decimal(f"{float(value):.6f}").quantize(_CENT, rounding=ROUND_HALF_UP)
    return float(exact) + 0.0  # + 0.0: no "-0.0" from a tiny negative sum


_CENT = Decimal("0.01")


PER_USER_DECIMALS = 6  # money per user: of the cent-rounded total, to a millionth of the currency unit


def money_per_user(total: float, users: int) -> float | None:
    """Money per user from the total to the cent, rounded: the same amount added up in another order
    (SQL vs Python, whole hours vs a raw edge) gives the same figure (70.15588709677418 vs
    70.1558870967742 before). None without users."""
    return (round(money(total) / users, PER_USER_DECIMALS) + 0.0) if users else None


def _per_user(metric: str, count: float, users: int) -> float:
    """A `per_user` figure: money per user (rounded, see `money_per_user`) for revenue; the others
    are quotients of whole counts, the same bits for the same counts."""
    if not users:
        return 0.0
    return (money_per_user(count, users) or 0.0) if metric == "revenue" else count / users


@dataclass(frozen=True)
class SendGroup:
    """Send requests of one (variation, channel, step, UTC day), counted in SQL."""

    variation_id: str
    channel: str
    step_index: int
    count: int
    day: str = ""


@dataclass(frozen=True)
class FailureGroup:
    """Sends of one (variation, channel, step) that failed for good (`failed`), whose recipient
    the provider reported gone (`opt_out`), or that may have been delivered all the same
    (`maybe`: flagged possible_duplicate); the last two are parts of the failed ones. In SQL."""

    variation_id: str
    channel: str
    step_index: int
    kind: Literal["failed", "opt_out", "maybe"]
    count: int


FAILURE_METRICS = {"failed": "failed_sends", "opt_out": "provider_opt_outs", "maybe": "possibly_delivered"}


@dataclass(frozen=True)
class HitGroup:
    """Human hits of one (variation, channel, step, kind), counted in SQL: `count` the sends
    opened / clicked (hits that were their send's first of the kind), `total` every human hit
    (None: as many as `count`, one hit per send)."""

    variation_id: str
    channel: str
    step_index: int
    kind: Literal["click", "impression"]
    count: int
    total: int | None = None

    @property
    def hits(self) -> int:
        return self.count if self.total is None else self.total


@dataclass(frozen=True)
class AttributedGroup:
    """Attributed events of one kind at one level, already attributed and summed in SQL.

    `level` is "v" (variation), "c" (variation, channel) or "s" (variation, step); `users` the
    distinct buyers, `value_sumsq` the sum over those users of (their value total)^2.
    """

    level: Literal["v", "c", "s"]
    variation_id: str
    channel: str
    step_index: int
    kind: Literal["purchase", "add_to_cart"]
    count: int
    value: float
    users: int
    value_sumsq: float


@dataclass
class ReportInput:
    """Everything the report needs for the users selected by the time range (see store/reports.py)."""

    users: dict[str, int]  # variation -> allocated users
    channel_users: dict[tuple[str, str], int] = field(default_factory=dict)  # users sent per (variation, channel)
    step_users: dict[tuple[str, int], int] = field(default_factory=dict)  # users sent per (variation, step)
    sends: list[SendGroup] = field(default_factory=list)
    failures: list[FailureGroup] = field(default_factory=list)
    hits: list[HitGroup] = field(default_factory=list)
    click_users: dict[str, int] = field(default_factory=dict)  # variation -> users with >= 1 human click
    clicks: list[Click] = field(default_factory=list)  # each human click, for attribution
    events: list[SiteEvent] = field(default_factory=list)  # purchases/add-to-carts of users who clicked
    # Users whose attribution was computed in SQL (store/reports.py, whole cohort hours):
    attributed_groups: list[AttributedGroup] = field(default_factory=list)
    revenue_by_day: dict[str, float] = field(default_factory=dict)
    # Day series in another time zone are made of UTC hours ('YYYYMMDDHH'): send requests, and
    # the purchase value attributed in SQL (revenue_by_day holds the same by UTC day).
    sends_by_hour: dict[str, int] = field(default_factory=dict)
    revenue_by_hour: dict[str, float] = field(default_factory=dict)
    conversions: list[Conversion] = field(default_factory=list)  # raw path: windowed in `aggregate`
    conversion_groups: list[ConversionGroup] = field(default_factory=list)  # counters: windowed in SQL
    conversion_currencies: list[ConversionCurrencyGroup] = field(default_factory=list)  # counters, per currency


@dataclass
class Aggregate:
    variations: dict[str, Bucket]
    channels: dict[tuple[str, str], Bucket]  # (variation, channel)
    steps: dict[tuple[str, int], Bucket]  # (variation, step)
    attributed: list[Attributed]  # those attributed here (not those in inp.attributed_groups)
    sends_by_day: dict[str, int] = field(default_factory=dict)
    revenue_by_day: dict[str, float] = field(default_factory=dict)  # attributed purchase value per UTC day
    sends_by_hour: dict[str, int] = field(default_factory=dict)  # per UTC hour 'YYYYMMDDHH'
    revenue_by_hour: dict[str, float] = field(default_factory=dict)  # attributed purchase value per UTC hour


def aggregate(inp: ReportInput, window: timedelta) -> Aggregate:
    """Variation, (variation, channel) and (variation, step) tables from grouped counts.

    Variation figures are normalized per allocated user; channel and step figures per user
    actually sent there. Purchases and add-to-carts come from attribution, so they land on
    the variation, channel and step of the click they are attributed to.
    """
    variations: dict[str, Bucket] = defaultdict(Bucket)
    channels: dict[tuple[str, str], Bucket] = defaultdict(Bucket)
    steps: dict[tuple[str, int], Bucket] = defaultdict(Bucket)
    for vid, n in inp.users.items():
        variations[vid].users = n
    for ck, n in inp.channel_users.items():
        channels[ck].users = n
    for sk, n in inp.step_users.items():
        steps[sk].users = n
    sends_by_day: dict[str, int] = defaultdict(int)
    for sg in inp.sends:
        sends_by_day[sg.day] += sg.count
        for b in (variations[sg.variation_id], channels[(sg.variation_id, sg.channel)], steps[(sg.variation_id, sg.step_index)]):
            b.counts["send_requests"] += sg.count
    for fg in inp.failures:
        failure, v = FAILURE_METRICS[fg.kind], fg.variation_id
        for b in (variations[v], channels[(v, fg.channel)], steps[(v, fg.step_index)]):
            b.counts[failure] += fg.count
    for hg in inp.hits:
        per_send, total = HIT_METRICS[hg.kind]
        for b in (variations[hg.variation_id], channels[(hg.variation_id, hg.channel)], steps[(hg.variation_id, hg.step_index)]):
            b.counts[per_send] += hg.count
            b.counts[total] += hg.hits
            if hg.channel == "email":  # CTR: clicked sends / opened sends, so reloads move neither
                if hg.kind == "click":
                    b.email_clicks += hg.count
                else:
                    b.email_impressions += hg.count
    for vid, n in inp.click_users.items():
        variations[vid].converters["clicks"] = n
    attributed = attribute(inp.clicks, inp.events, window)
    converted: dict[tuple[str, Any, str], set[str]] = defaultdict(set)
    revenue: dict[tuple[str, Any, str], float] = defaultdict(float)  # (level, key, user) -> revenue
    for item in attributed:
        c, e = item.click, item.event
        keyed = (("v", c.variation_id, variations[c.variation_id]),
                 ("c", (c.variation_id, c.channel), channels[(c.variation_id, c.channel)]),
                 ("s", (c.variation_id, c.step_index), steps[(c.variation_id, c.step_index)]))  # fmt: skip
        for level, key, b in keyed:
            if e.kind == "purchase":
                b.counts["purchases"] += 1
                b.counts["revenue"] += e.value
                converted[(level, key, "purchases")].add(e.user_id)
                revenue[(level, key, e.user_id)] += e.value
            else:
                b.counts["add_to_carts"] += 1
                converted[(level, key, "add_to_carts")].add(e.user_id)
    buckets: dict[str, Any] = {"v": variations, "c": channels, "s": steps}
    for (level, key, metric), users in converted.items():
        buckets[level][key].converters[metric] = len(users)
        if metric == "purchases":
            buckets[level][key].converters["revenue"] = len(users)
    for (level, key, _user), value in revenue.items():
        buckets[level][key].revenue_sumsq += value * value
    # Groups attributed in SQL belong to other users (other cohorts): their figures add up.
    revenue_by_day: dict[str, float] = defaultdict(float, inp.revenue_by_day)
    revenue_by_hour: dict[str, float] = defaultdict(float, inp.revenue_by_hour)
    for item in attributed:
        if item.event.kind == "purchase":
            revenue_by_day[item.event.at.date().isoformat()] += item.event.value
            revenue_by_hour[hour_key(item.event.at)] += item.event.value
    for g in inp.attributed_groups:
        group_key: Any = {"v": g.variation_id, "c": (g.variation_id, g.channel), "s": (g.variation_id, g.step_index)}[g.level]
        b = buckets[g.level][group_key]
        if g.kind == "purchase":
            b.counts["purchases"] += g.count
            b.counts["revenue"] += g.value
            b.converters["purchases"] += g.users
            b.converters["revenue"] += g.users
            b.revenue_sumsq += g.value_sumsq
        else:
            b.counts["add_to_carts"] += g.count
            b.converters["add_to_carts"] += g.users
    _enrolled_conversions(inp, window, variations)
    money_by_day = {day: money(value) for day, value in sorted(revenue_by_day.items())}
    return Aggregate(dict(variations), dict(channels), dict(steps), attributed, dict(sorted(sends_by_day.items())),
                     money_by_day, dict(sorted(inp.sends_by_hour.items())),
                     {hour: money(value) for hour, value in sorted(revenue_by_hour.items())})  # fmt: skip


def hour_key(at: datetime) -> str:
    """The UTC hour of `at` as 'YYYYMMDDHH' (store.report_rollup.hour_key_of, for the series)."""
    return at.astimezone(UTC).strftime("%Y%m%d%H")


def _enrolled_conversions(inp: ReportInput, window: timedelta, variations: dict[str, Bucket]) -> None:
    """Every variation's enrolled-user conversions: the raw ones within the window, plus the groups
    windowed in SQL (other users: their figures add up)."""
    per_user: dict[tuple[str, str], list[float]] = defaultdict(list)  # (variation, user) -> revenue values
    for vid in list(variations):
        variations[vid].enrolled = Enrolled()
    for conv in inp.conversions:
        if conv.lag <= window:
            per_user[(conv.variation_id, conv.user_id)].append(conv.value if conv.counted else 0.0)
            _enrolled_of(variations, conv.variation_id).add_value(conv.currency, conv.value, conv.counted)
    for (vid, _user), values in per_user.items():
        e = _enrolled_of(variations, vid)
        e.purchases += len(values)
        e.buyers += 1
        e.revenue += sum(values)
        e.revenue_sumsq += sum(values) ** 2
    for g in inp.conversion_groups:
        e = _enrolled_of(variations, g.variation_id)
        e.purchases += g.purchases
        e.buyers += g.buyers
        e.revenue += g.revenue
        e.revenue_sumsq += g.revenue_sumsq
    for cg in inp.conversion_currencies:
        _enrolled_of(variations, cg.variation_id).add_value(cg.currency, cg.value, cg.counted)


def _enrolled_of(variations: dict[str, Bucket], vid: str) -> Enrolled:
    bucket = variations[vid]
    if bucket.enrolled is None:
        bucket.enrolled = Enrolled()
    return bucket.enrolled


# ------------------------------------------------------------------------------ winner


@dataclass(frozen=True)
class Arm:
    """One variation's evidence for the primary metric."""

    id: str
    users: int
    successes: int = 0  # conversion-type metrics: users with at least one event (or clicks, for CTR)
    trials: int = 0  # users (or impressions, for CTR)
    total: float = 0.0  # revenue: sum over allocated users of their revenue
    total_sq: float = 0.0  # revenue: sum over allocated users of their revenue squared


def arms_for(metric: str, buckets: dict[str, Bucket], ids: Sequence[str]) -> list[Arm]:
    arms = []
    for vid in ids:
        b = buckets.get(vid) or Bucket()
        n = b.users
        if metric == "revenue":
            buyers, total = min(b.converters["revenue"], n), money(b.counts["revenue"])
            arms.append(Arm(vid, n, buyers, n, total, _sumsq(b.revenue_sumsq)))
        elif metric == "ctr":
            imp, clk = int(b.email_impressions), int(min(b.email_clicks, b.email_impressions))
            arms.append(Arm(vid, n, successes=clk, trials=imp))
        else:
            # Users count by their first journey's variation, conversions by the variation recorded on
            # the later fact (a removed variation, an identity merge): an arm can show more converters
            # than users. Clamped, so the rate stays a probability and Beta(1+k, 1+n-k) is defined.
            arms.append(Arm(vid, n, successes=min(b.converters[metric], n), trials=n))
    return arms


def _sumsq(value: float) -> float:
    """A sum of squared money values to cent² (4 decimals): as `money`, independent of the order
    the squares were added in, so the posterior is too."""
    return round(float(value), 4) + 0.0


def beta_prob_b_beats_a(a_succ: int, a_fail: int, b_succ: int, b_fail: int) -> float:
    """Exact P(p_B > p_A) for Beta(1+s, 1+f) posteriors (Evan Miller's closed form).

    The sum's terms are computed together: the first from log-beta functions, each next one
    from the previous by their ratio (a rational function of i), so the cost is a few numpy
    operations on alpha_B terms instead of alpha_B Python iterations of four log-gammas.
    """
    # Negative counts (more successes than trials upstream) would take the log of a negative
    # number: NaN. A count below 0 means "none" here; callers clamp successes to trials.
    a_succ, a_fail, b_succ, b_fail = (max(int(x), 0) for x in (a_succ, a_fail, b_succ, b_fail))
    alpha_a, beta_a, alpha_b, beta_b = a_succ + 1, a_fail + 1, b_succ + 1, b_fail + 1

    def lbeta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    # T_0 = B(alpha_A, beta_A + beta_B) / (beta_B * B(1, beta_B) * B(alpha_A, beta_A)), B(1, y) = 1/y;
    # T_{i+1} / T_i = (alpha_A + i)(beta_B + i) / ((alpha_A + beta_A + beta_B + i)(1 + i)).
    log_t0 = lbeta(alpha_a, beta_a + beta_b) - lbeta(alpha_a, beta_a)
    i = np.arange(alpha_b - 1, dtype=np.float64)
    log_ratio = np.log((alpha_a + i) * (beta_b + i)) - np.log((alpha_a + beta_a + beta_b + i) * (1 + i))
    log_terms = log_t0 + np.concatenate(([0.0], np.cumsum(log_ratio)))
    return min(max(float(np.exp(log_terms).sum()), 0.0), 1.0)  # rounding can leave it a hair outside [0, 1]


def _posterior_draws(metric: str, arms: Sequence[Arm], rng: np.random.Generator) -> NDArray[np.float64]:
    """DRAWS joint draws of the arms' posteriors: one row per draw, one column per arm."""
    columns = []
    for arm in arms:  # column by column from one seeded generator: the same data, the same draws
        if metric == "revenue":
            # Users who bought nothing contribute zeros: mean and variance follow from the two sums.
            n = max(arm.users, 1)
            mean = arm.total / n
            var = max(arm.total_sq - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
            # No spread (no revenue at all, or every user the same): the posterior is the observed mean
            # itself. (A 1e-9 spread clipped at 0 made a revenue-less arm exactly 0 in half the draws
            # and tiny positive in the others: noise that then decided who was "best".)
            se = math.sqrt(var / n) if var > 0 else 0.0
            # Revenue per user is never below 0: a wide normal's negative draws gave uplift intervals
            # under -100%, which no arm can reach. Clipped draws tie at 0: `_best_shares` splits ties.
            columns.append(np.maximum(rng.normal(mean, se, DRAWS), 0.0))
        else:
            successes, fails = _successes_failures(arm)
            columns.append(rng.beta(successes + 1, fails + 1, DRAWS))
    return np.column_stack(columns)


def _best_shares(draws: NDArray[np.float64]) -> NDArray[np.float64]:
    """How many draws each arm is best in; a draw where arms tie for the best (revenue draws
    clipped at 0, arms without revenue) counts a 1/k share for each of the k tied arms, so no arm
    is favoured by its place in the order (argmax gave every tie to the first)."""
    best = (draws == draws.max(axis=1, keepdims=True)).astype(np.float64)
    shares: NDArray[np.float64] = (best / best.sum(axis=1, keepdims=True)).sum(axis=0)
    return shares


def _share_better(draws: NDArray[np.float64], arm: int, base: int) -> float:
    """P(arm > base) from the draws, a tie counting half (neither is better)."""
    return float(np.mean(draws[:, arm] > draws[:, base]) + 0.5 * np.mean(draws[:, arm] == draws[:, base]))


def _successes_failures(arm: Arm) -> tuple[int, int]:
    """Successes and failures of a conversion arm, each within [0, trials]."""
    successes = min(max(arm.successes, 0), max(arm.trials, 0))
    return successes, max(arm.trials, 0) - successes


def _observed_mean(metric: str, arm: Arm) -> float:
    """The arm's observed mean of the metric: revenue per user, or the conversion rate."""
    if metric == "revenue":
        return arm.total / arm.users if arm.users else 0.0
    successes, _ = _successes_failures(arm)
    return successes / arm.trials if arm.trials > 0 else 0.0


def _uplift_intervals(draws: NDArray[np.float64], base: int) -> list[list[float] | None]:
    """The 95% interval of each arm's relative uplift over the baseline (None for the baseline)."""
    priced = draws[draws[:, base] > 0]
    uplifts = np.sort(priced / priced[:, [base]] - 1, axis=0)  # per arm (column), ascending
    intervals: list[list[float] | None] = []
    for i in range(draws.shape[1]):
        u = uplifts[:, i]
        bounds = [float(u[int(q * (len(u) - 1))]) for q in (0.025, 0.975)] if len(u) and i != base else None
        intervals.append(bounds if bounds is not None and all(map(math.isfinite, bounds)) else None)
    return intervals


def winner(metric: str, arms: Sequence[Arm], baseline: str | None = None) -> dict[str, Any]:
    """Probability each arm is best, uplift intervals vs the baseline, and the verdict."""
    if len(arms) < 2:
        return {"metric": metric, "status": "single_variation", "winner": None, "variations": []}
    draws = _posterior_draws(metric, arms, np.random.default_rng(SEED))
    base = next((i for i, a in enumerate(arms) if a.id == baseline), 0)
    wins = _best_shares(draws)  # ties shared, never given to the first arm
    # A relative uplift over a baseline whose observed mean is 0 (no revenue, no conversion; or below
    # 0 with refunds) is a ratio of draws around 0: -1509%..+1108% says nothing, so none is given.
    comparable = _observed_mean(metric, arms[base]) > 0
    intervals = _uplift_intervals(draws, base) if comparable else [None] * len(arms)
    prob = [float(w) / DRAWS for w in wins]
    if metric != "revenue" and len(arms) == 2:
        # Two conversion arms: use the exact value instead of the simulation's estimate.
        a, b = arms
        p_b = beta_prob_b_beats_a(*_successes_failures(a), *_successes_failures(b))
        prob = [1 - p_b, p_b]
    rows = []
    for i, a in enumerate(arms):
        interval = intervals[i]
        rows.append({"id": a.id, "probability_to_be_best": round(prob[i], 4),
                     "uplift_vs_baseline": None if interval is None else {"low": round(interval[0], 4), "high": round(interval[1], 4)}})  # fmt: skip
    # An arm no one is in has only its prior (a 0.5 chance against a low rate): it leads nothing.
    seen = [i for i, a in enumerate(arms) if a.users > 0] or list(range(len(arms)))
    best = max(seen, key=prob.__getitem__)
    # Arms tied for the highest probability (no revenue anywhere: every draw a tie at 0) have no leader.
    tied = sum(1 for i in seen if prob[i] == prob[best]) > 1
    conversions = sum(_successes_failures(a)[0] if metric != "revenue" else a.successes for a in arms)
    enough = _minimum_sample([a.users for a in arms], conversions)
    status = "not_enough_data" if not enough else ("winner" if prob[best] >= WIN_PROBABILITY else "no_winner_yet")
    return {
        "metric": metric,
        "baseline": arms[base].id,
        "status": status,
        "winner": arms[best].id if status == "winner" else None,
        "leader": arms[best].id if arms[best].users > 0 and not tied else None,
        "variations": rows,
        "thresholds": {"min_users": MIN_USERS, "min_conversions": MIN_CONVERSIONS, "probability": WIN_PROBABILITY},
    }


# ------------------------------------------------------------------ holdout comparison

HOLDOUT_RULE = (
    "enrolled-user conversions: every purchase a user makes within the campaign's attribution window after "
    "their first enrollment in it counts for the arm of that enrollment, the holdout's included, whether or not "
    "a message was sent or clicked"
)
NO_HOLDOUT = "the campaign has no holdout (control) variation: there is nothing to compare the arms with"
EMPTY_HOLDOUT = "no user who first triggered the campaign in this range was allocated to the holdout"
NO_ARMS = "no variation besides the holdout"
HOLDOUT_ZERO = {
    "conversion_rate": "the holdout has no enrolled-user conversion yet (0 of {n} users): an uplift relative to 0 "
                       "is not defined",
    "revenue_per_user": "the holdout has no revenue yet ({n} users): an uplift relative to 0 is not defined",
}  # fmt: skip
TOO_FEW = (
    "too few users or buyers: an arm is compared with the holdout once both have at least {min_users} users and "
    "together at least {min_conversions} buyers (the winner's minimum sample); the holdout has {users} users and "
    "{buyers} buyers"
)
MIXED_CURRENCIES = (
    "the enrolled users' revenue is in {currencies}, and Rejoin has no exchange rates to add them up: set the "
    "section's report currency (PATCH /api/v1/section `currency`) to compare revenue in one"
)


def holdout_comparison(buckets: dict[str, Bucket], arm_ids: Sequence[str], holdout_id: str | None) -> dict[str, Any]:
    """Each arm against the holdout on enrolled-user conversions: conversion rate and revenue per
    enrolled user, each with the arm's value, the 95% interval of its relative uplift over the
    holdout and the probability it beats the holdout (the posteriors of `winner`).

    Not measurable (status, reason; no figures) without a holdout, without holdout users in the
    range, or, per metric, while the holdout's value is 0 (a relative uplift over 0 says nothing);
    revenue per user too when the compared users' revenue is in more than one currency (no report
    currency set): no value, since a sum of amounts in different currencies is none.

    The winner's minimum sample applies to each arm and the holdout (`_enough`): below it the row
    is `not_enough_data`, its value kept but no interval or probability; a metric (and the whole
    comparison) is `not_enough_data` when no arm reaches it.
    """
    thresholds = {"min_users": MIN_USERS, "min_conversions": MIN_CONVERSIONS}
    out: dict[str, Any] = {"holdout": holdout_id, "status": "not_measurable", "reason": None, "rule": HOLDOUT_RULE,
                           "thresholds": thresholds, "metrics": {}}  # fmt: skip
    hold = buckets.get(holdout_id) if holdout_id is not None else None
    if holdout_id is None:
        out["reason"] = NO_HOLDOUT
    elif hold is None or hold.users == 0:
        out["reason"] = EMPTY_HOLDOUT
    elif not arm_ids:
        out["reason"] = NO_ARMS
    if out["reason"] is not None:
        return out
    assert hold is not None and holdout_id is not None
    arms = [_enrolled_arm(holdout_id, hold)] + [_enrolled_arm(v, buckets.get(v) or Bucket()) for v in arm_ids]
    too_few = TOO_FEW.format(users=arms[0].users, buyers=arms[0].successes, **thresholds)
    no_buyer = HOLDOUT_ZERO["conversion_rate"].format(n=hold.users)
    out["metrics"]["conversion_rate"] = _against_holdout("purchases", arms, no_buyer, too_few)
    # Revenue is compared in one currency only: a sum of EUR and USD values is no amount of money.
    mixed = sorted(set().union(*((buckets.get(v) or Bucket()).enrolled_currencies() for v in [holdout_id, *arm_ids])))
    if len(mixed) > 1:
        out["metrics"]["revenue_per_user"] = {
            "status": "not_measurable", "reason": MIXED_CURRENCIES.format(currencies=", ".join(mixed)),
            "holdout": None, "variations": [{"id": a.id, "status": "not_measurable", "value": None, "uplift": None,
                                             "probability_better": None} for a in arms[1:]],
        }  # fmt: skip
    else:
        zero = HOLDOUT_ZERO["revenue_per_user"].format(n=hold.users)
        out["metrics"]["revenue_per_user"] = _against_holdout("revenue", arms, zero, too_few)
    statuses = [m["status"] for m in out["metrics"].values()]
    out["status"] = next((s for s in ("measured", "not_enough_data") if s in statuses), "not_measurable")
    out["reason"] = next((m["reason"] for m in out["metrics"].values() if m["status"] == out["status"]), None)
    return out


def _enrolled_arm(vid: str, b: Bucket) -> Arm:
    e = b.enrolled or Enrolled()
    buyers = min(e.buyers, b.users)
    return Arm(vid, b.users, successes=buyers, trials=b.users, total=money(e.revenue), total_sq=_sumsq(e.revenue_sumsq))


def _enough(hold: Arm, arm: Arm) -> bool:
    """The winner's minimum sample for an arm against the holdout (`_minimum_sample`): both arms'
    users, and the buyers between them (a buyer converts for both metrics)."""
    return _minimum_sample([hold.users, arm.users], hold.successes + arm.successes)


def _minimum_sample(users: Sequence[int], conversions: int) -> bool:
    """Enough data to compare arms at all: every arm at least MIN_USERS users, at least
    MIN_CONVERSIONS converting users among them (the winner's rule, and the holdout comparison's)."""
    return all(n >= MIN_USERS for n in users) and conversions >= MIN_CONVERSIONS


def _shown_mean(kind: str, arm: Arm) -> float:
    """The observed mean as reported: money per user rounded (`money_per_user`), rates as they are."""
    return (money_per_user(arm.total, arm.users) or 0.0) if kind == "revenue" else _observed_mean(kind, arm)


def _against_holdout(kind: str, arms: Sequence[Arm], zero_reason: str, too_few: str) -> dict[str, Any]:
    """`arms[0]` is the holdout: the others' values, uplift intervals and P(better than it); an arm
    below the minimum sample (`_enough`) keeps its value only."""
    hold = arms[0]
    base_mean = _observed_mean(kind, hold)
    rows: list[dict[str, Any]] = [{"id": a.id, "status": "not_enough_data", "uplift": None, "probability_better": None,
                                   "value": _shown_mean(kind, a) if a.users else None} for a in arms[1:]]  # fmt: skip
    shown = _shown_mean(kind, hold)
    if base_mean <= 0:
        for row in rows:
            row["status"] = "not_measurable"
        return {"status": "not_measurable", "reason": zero_reason, "holdout": shown, "variations": rows}
    measured = [i for i, a in enumerate(arms[1:], start=1) if a.users > 0 and _enough(hold, a)]
    if not measured:
        return {"status": "not_enough_data", "reason": too_few, "holdout": shown, "variations": rows}
    draws = _posterior_draws(kind, arms, np.random.default_rng(SEED))
    intervals = _uplift_intervals(draws, 0)
    for i in measured:
        a, row = arms[i], rows[i - 1]
        interval = intervals[i]
        row["status"] = "measured"
        row["uplift"] = None if interval is None else {"low": round(interval[0], 4), "high": round(interval[1], 4)}
        if kind == "revenue":
            better = _share_better(draws, i, 0)
        else:
            better = beta_prob_b_beats_a(*_successes_failures(hold), *_successes_failures(a))
        row["probability_better"] = round(better, 4)
    return {"status": "measured", "reason": None, "holdout": shown, "variations": rows}
