"""Campaign report maths: attribution, aggregation, normalization, Bayesian winner. Pure.

Rules (docs/reports.md explains them with examples):
- Attribution starts at a human click. A purchase (or add-to-cart) by an identified user is
  attributed to that user's last click before it, if it happened within the campaign's
  attribution window after that click. Each purchase is attributed at most once (purchases
  are deduplicated by transaction id), to the variation/step/channel of that last click.
- Variation metrics are normalized per unique user allocated to the variation; channel and
  step metrics per unique user actually sent on that channel / at that step. CTR is
  clicks / impressions on email only, never normalized.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

METRICS = ("send_requests", "impressions", "clicks", "purchases", "revenue", "add_to_carts")
MIN_USERS = 100  # per compared variation, before a winner may be declared
MIN_CONVERSIONS = 10  # converting users over all compared variations
WIN_PROBABILITY = 0.95
DRAWS = 20_000
SEED = 20_240_601  # fixed: the same data always gives the same report


@dataclass(frozen=True)
class Allocation:
    user_id: str
    variation_id: str
    is_control: bool
    first_triggered_at: datetime


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
    seen: set[tuple[str, str]] = set()
    out: list[Attributed] = []
    for e in sorted(events, key=lambda e: (e.at, e.id)):
        if not e.identified:
            continue  # attribution needs the user identified when buying
        dedupe = (e.kind, f"tx:{e.user_id}:{e.transaction_id}" if e.transaction_id else f"id:{e.id}")
        if dedupe in seen:
            continue
        last = None
        for c in by_user.get(e.user_id, ()):
            if c.at > e.at:
                break
            last = c
        if last is None or e.at - last.at > window:
            continue
        seen.add(dedupe)
        out.append(Attributed(e, last))
    return out


@dataclass
class Bucket:
    """Raw counts for a group of users, plus who they are (for normalization and the winner)."""

    users: set[str] = field(default_factory=set)
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))
    email_impressions: float = 0.0
    email_clicks: float = 0.0
    converters: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    revenue_by_user: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, metric: str, user: str, amount: float = 1.0) -> None:
        self.counts[metric] += amount
        self.converters[metric].add(user)
        if metric == "revenue":
            self.revenue_by_user[user] += amount

    def table(self) -> dict[str, Any]:
        n = len(self.users)
        return {
            "users": n,
            "metrics": {
                m: {"count": _num(self.counts[m]), "per_user": (self.counts[m] / n) if n else 0.0} for m in METRICS
            },
            "ctr": (self.email_clicks / self.email_impressions) if self.email_impressions else None,
        }


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else round(v, 2)


@dataclass(frozen=True)
class SendCount:
    user_id: str
    variation_id: str
    step_index: int
    channel: str
    count: int
    day: str = ""  # UTC date, for the sends-per-day series


@dataclass(frozen=True)
class Hit:
    user_id: str
    variation_id: str
    step_index: int
    channel: str
    kind: Literal["click", "impression"]
    at: datetime


@dataclass
class Aggregate:
    variations: dict[str, Bucket]
    channels: dict[tuple[str, str], Bucket]  # (variation, channel)
    steps: dict[tuple[str, int], Bucket]  # (variation, step)
    attributed: list[Attributed]
    sends_by_day: dict[str, int] = field(default_factory=dict)


def aggregate(
    allocations: Sequence[Allocation],
    sends: Iterable[SendCount],
    hits: Iterable[Hit],
    events: Iterable[SiteEvent],
    window: timedelta,
) -> Aggregate:
    """Group everything by variation, by (variation, channel) and by (variation, step).

    Only users in `allocations` count (the time-range rule is applied by the caller when it
    picks them). Channel and step buckets hold only users sent there, so their per-user
    figures are "per user who actually got this message".
    """
    alloc = {a.user_id: a for a in allocations}
    variations: dict[str, Bucket] = defaultdict(Bucket)
    channels: dict[tuple[str, str], Bucket] = defaultdict(Bucket)
    steps: dict[tuple[str, int], Bucket] = defaultdict(Bucket)
    for a in allocations:
        variations[a.variation_id].users.add(a.user_id)
    sends_by_day: dict[str, int] = defaultdict(int)
    for s in sends:
        if s.user_id not in alloc:
            continue
        sends_by_day[s.day] += s.count
        for b in (variations[s.variation_id], channels[(s.variation_id, s.channel)], steps[(s.variation_id, s.step_index)]):
            b.add("send_requests", s.user_id, s.count)
        channels[(s.variation_id, s.channel)].users.add(s.user_id)
        steps[(s.variation_id, s.step_index)].users.add(s.user_id)
    clicks: list[Click] = []
    for h in hits:
        first = alloc.get(h.user_id)
        if first is None or h.at < first.first_triggered_at:
            continue
        metric = "clicks" if h.kind == "click" else "impressions"
        buckets = (variations[h.variation_id], channels[(h.variation_id, h.channel)], steps[(h.variation_id, h.step_index)])
        for b in buckets:
            b.add(metric, h.user_id)
            if h.channel == "email":
                if metric == "clicks":
                    b.email_clicks += 1
                else:
                    b.email_impressions += 1
        if h.kind == "click":
            clicks.append(Click(h.user_id, h.variation_id, h.step_index, h.channel, h.at))
    attributed = attribute(clicks, (e for e in events if e.user_id in alloc), window)
    for item in attributed:
        c, e = item.click, item.event
        for b in (variations[c.variation_id], channels[(c.variation_id, c.channel)], steps[(c.variation_id, c.step_index)]):
            if e.kind == "purchase":
                b.add("purchases", e.user_id)
                b.add("revenue", e.user_id, e.value)
            else:
                b.add("add_to_carts", e.user_id)
    return Aggregate(dict(variations), dict(channels), dict(steps), attributed, dict(sorted(sends_by_day.items())))


# ------------------------------------------------------------------------------ winner


@dataclass(frozen=True)
class Arm:
    """One variation's evidence for the primary metric."""

    id: str
    users: int
    successes: int = 0  # conversion-type metrics: users with at least one event (or clicks, for CTR)
    trials: int = 0  # users (or impressions, for CTR)
    values: tuple[float, ...] = ()  # revenue: per-user revenue of every allocated user (zeros included)


def arms_for(metric: str, buckets: dict[str, Bucket], ids: Sequence[str]) -> list[Arm]:
    arms = []
    for vid in ids:
        b = buckets.get(vid) or Bucket()
        n = len(b.users)
        if metric == "revenue":
            values = [b.revenue_by_user.get(u, 0.0) for u in sorted(b.users)]
            arms.append(Arm(vid, n, successes=len(b.converters["revenue"]), trials=n, values=tuple(values)))
        elif metric == "ctr":
            imp, clk = int(b.email_impressions), int(min(b.email_clicks, b.email_impressions))
            arms.append(Arm(vid, n, successes=clk, trials=imp))
        else:
            arms.append(Arm(vid, n, successes=len(b.converters[metric]), trials=n))
    return arms


def beta_prob_b_beats_a(a_succ: int, a_fail: int, b_succ: int, b_fail: int) -> float:
    """Exact P(p_B > p_A) for Beta(1+s, 1+f) posteriors (Evan Miller's closed form)."""
    alpha_a, beta_a, alpha_b, beta_b = a_succ + 1, a_fail + 1, b_succ + 1, b_fail + 1

    def lbeta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    total = 0.0
    for i in range(alpha_b):
        total += math.exp(
            lbeta(alpha_a + i, beta_a + beta_b) - math.log(beta_b + i) - lbeta(1 + i, beta_b) - lbeta(alpha_a, beta_a)
        )
    return total


def _sampler(arm: Arm, metric: str, rng: random.Random) -> Any:
    if metric == "revenue":
        n = max(len(arm.values), 1)
        mean = sum(arm.values) / n
        var = sum((v - mean) ** 2 for v in arm.values) / (n - 1) if n > 1 else 0.0
        se = math.sqrt(var / n) if var > 0 else 1e-9
        return lambda: rng.gauss(mean, se)
    fails = max(arm.trials - arm.successes, 0)
    return lambda: rng.betavariate(arm.successes + 1, fails + 1)


def winner(metric: str, arms: Sequence[Arm], baseline: str | None = None) -> dict[str, Any]:
    """Probability each arm is best, uplift intervals vs the baseline, and the verdict."""
    if len(arms) < 2:
        return {"metric": metric, "status": "single_variation", "winner": None, "variations": []}
    rng = random.Random(SEED)
    samplers = [_sampler(a, metric, rng) for a in arms]
    base = next((i for i, a in enumerate(arms) if a.id == baseline), 0)
    wins = [0] * len(arms)
    uplifts: list[list[float]] = [[] for _ in arms]
    for _ in range(DRAWS):
        draw = [s() for s in samplers]
        wins[max(range(len(draw)), key=draw.__getitem__)] += 1
        for i, d in enumerate(draw):
            if draw[base] > 0:
                uplifts[i].append(d / draw[base] - 1)
    prob = [w / DRAWS for w in wins]
    if metric != "revenue" and len(arms) == 2:
        # Two conversion arms: use the exact value instead of the simulation's estimate.
        a, b = arms
        p_b = beta_prob_b_beats_a(a.successes, a.trials - a.successes, b.successes, b.trials - b.successes)
        prob = [1 - p_b, p_b]
    rows = []
    for i, a in enumerate(arms):
        u = sorted(uplifts[i])
        interval = [u[int(0.025 * (len(u) - 1))], u[int(0.975 * (len(u) - 1))]] if u and i != base else None
        rows.append({"id": a.id, "probability_to_be_best": round(prob[i], 4),
                     "uplift_vs_baseline": None if interval is None else {"low": round(interval[0], 4), "high": round(interval[1], 4)}})  # fmt: skip
    best = max(range(len(arms)), key=prob.__getitem__)
    conversions = sum(a.successes for a in arms)
    enough = all(a.users >= MIN_USERS for a in arms) and conversions >= MIN_CONVERSIONS
    status = "not_enough_data" if not enough else ("winner" if prob[best] >= WIN_PROBABILITY else "no_winner_yet")
    return {
        "metric": metric,
        "baseline": arms[base].id,
        "status": status,
        "winner": arms[best].id if status == "winner" else None,
        "leader": arms[best].id,
        "variations": rows,
        "thresholds": {"min_users": MIN_USERS, "min_conversions": MIN_CONVERSIONS, "probability": WIN_PROBABILITY},
    }
