"""The pre-aggregated report equals the raw recompute (the reference) on randomized data.

Facts are written in time order through the write-path functions (tests/reports_world.py), as
the engine would: allocations, sends with final statuses, human and bot hits (some before the
user's first trigger), purchases and add-to-carts (duplicated transactions, anonymous buyers),
re-triggers into another variation and test users. Then reports over several ranges, most
with edges inside an hour, must match field for field; so must a rebuild from the raw tables.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlmodel import col
from temporalio.testing import WorkflowEnvironment

from domain.reports import Aggregate, aggregate
from store import report_rollup, users
from store import reports as q
from store.engine import Store
from store.report_tables import ReportAttribution
from store.retention import purge_events
from store.tables import Event, User
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    reachable_user,
    step,
)
from tests.reports_world import World

T0 = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
WINDOW = timedelta(hours=20)
SPEC = {
    "name": "Rollup",
    "type": "cart_abandonment",
    "channel_priority": ["email", "sms"],
    "settings": {"primary_metric": "purchases", "attribution_window": "PT20H"},
    "variations": [
        {"id": "a", "name": "A", "share": 45, "steps": [step("S1"), step("S2", "P1D", ("email", "sms"))]},
        {"id": "b", "name": "B", "share": 45, "steps": [step("S1")]},
        {"id": "hold", "name": "Holdout", "share": 10, "control": True},
    ],
}


def _plan(w: World, rng: random.Random, users: int) -> list[tuple[datetime, Callable[[], Any]]]:
    """Random facts as (time, write) pairs; users are created up front, journeys at their time."""
    acts: list[tuple[datetime, Callable[[], Any]]] = []
    for n in range(users):
        var = rng.choice(["a", "a", "b", "b", "hold"])
        first = T0 + timedelta(minutes=rng.uniform(0, 3 * 24 * 60))
        uid = w.user(var, first - timedelta(days=400), identified=rng.random() < 0.8, is_test=True)  # a test journey
        if n % 7 != 0:  # most users then really trigger (the rest stay test-only)
            acts.append((first, lambda u=uid, v=var, t=first: w.retrigger(u, v, t, control=v == "hold")))
        if rng.random() < 0.2:  # a re-trigger, sometimes into another variation
            again = first + timedelta(hours=rng.uniform(1, 30))
            other = rng.choice(["a", "b"])
            acts.append((again, lambda u=uid, v=other, t=again: w.retrigger(u, v, t)))
        if var == "hold":
            continue
        t = first
        for st in range(rng.randint(0, 3)):
            t += timedelta(minutes=rng.uniform(1, 900))
            ch = rng.choice(["email", "email", "sms"])
            status = rng.choice(["accepted", "accepted", "failed", "skipped"])
            acts.append((t, lambda u=uid, v=var, s=st % 2, c=ch, at=t, x=status: w.send(u, v, s, c, at, status=x)))
            for _ in range(rng.randint(0, 3)):
                at = t + timedelta(minutes=rng.uniform(-120, 600))  # some before the first trigger
                kind, bot = rng.choice(["impression", "click", "click"]), rng.random() < 0.15
                acts.append((at, lambda u=uid, v=var, k=kind, a=at, c=ch, s=st % 2, b=bot: w.hit(u, v, k, a, c, s, b)))
        for _ in range(rng.randint(0, 3)):
            at = first + timedelta(minutes=rng.uniform(-60, 3000))
            kind = rng.choice(["purchase", "purchase", "add_to_cart"])
            tx = rng.choice([None, "T1", "T2"])
            value = round(rng.uniform(5, 200), 2)
            acts.append((at, lambda u=uid, k=kind, a=at, v=value, x=tx: w.event(u, k, a, v, x)))
    return acts


def _view(agg: Aggregate) -> dict[str, Any]:
    """Everything a report shows, comparable with == (sums in another order: rounded to 1e-6)."""

    def rounded(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, 6)
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(rounded(v) for v in x)
        return x

    def buckets(bs: dict[Any, Any]) -> dict[Any, Any]:
        return {k: rounded((b.table(), dict(b.converters), b.revenue_sumsq)) for k, b in bs.items()}

    return {
        "variations": buckets(agg.variations),
        "channels": buckets(agg.channels),
        "steps": buckets(agg.steps),
        "sends_by_day": agg.sends_by_day,
        "revenue_by_day": rounded(agg.revenue_by_day),
    }


def _compare(store: Store, section_id: str, cid: str, ranges: list[tuple[datetime, datetime]]) -> int:
    checked = 0
    with store.session() as s:
        for start, end in ranges:
            fast = _view(aggregate(q.load(s, section_id, cid, start, end, WINDOW), WINDOW))
            raw = _view(aggregate(q.load_raw(s, section_id, cid, start, end), WINDOW))
            diff = {(part, k): (fast[part].get(k), raw[part].get(k)) for part in fast
                    for k in set(fast[part]) | set(raw[part]) if fast[part].get(k) != raw[part].get(k)}  # fmt: skip
            assert not diff, (start, end, diff)
            checked += sum(b[0]["users"] for b in raw["variations"].values())
    return checked


async def test_rollup_report_equals_raw_recompute(api: httpx.AsyncClient, store: Store, section: SectionKeys) -> None:
    """Counters + raw edges == raw recompute over several ranges; also after identity merges and a rebuild."""
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)
    rng = random.Random(7)
    for _, write in sorted(_plan(w, rng, 70), key=lambda a: a[0]):
        write()
    h = lambda hours: T0 + timedelta(hours=hours)  # noqa: E731
    ranges = [
        (h(-24), h(24 * 10)),
        (h(0), h(24)),
        (h(5.25), h(47.5)),
        (h(10.1), h(10.9)),
        (h(30.5), h(31)),
        (h(23.999), h(72.001)),
    ]
    assert _compare(store, section.id, cid, ranges) > 30  # the full range sees most users
    with store.session() as s:
        full = _view(aggregate(q.load(s, section.id, cid, *ranges[0], WINDOW), WINDOW))
    assert full["revenue_by_day"] and full["sends_by_day"], "the random data exercises attribution and sends"
    with store.session() as s:  # identity merges re-point journeys, sends and events: counters follow
        buyers = sorted(s.execute(select(ReportAttribution.user_id).distinct()).scalars())
        owners = [u for u in buyers if u in w.identified][:3]
        for merged, into in ((owners[0], owners[1]), (owners[2], next(iter(w.identified)))):
            if merged != into:
                users.merge_users(s, merged=s.get(User, merged), into=s.get(User, into), now=h(24 * 20))  # type: ignore[arg-type]
    assert _compare(store, section.id, cid, ranges) > 30
    with store.session() as s:
        full = _view(aggregate(q.load(s, section.id, cid, *ranges[0], WINDOW), WINDOW))
    with store.session() as s:
        assert report_rollup.rebuild(s, [cid]) == 1
    assert _compare(store, section.id, cid, ranges) > 30
    with store.session() as s:
        assert _view(aggregate(q.load(s, section.id, cid, *ranges[0], WINDOW), WINDOW)) == full


async def test_counters_of_real_journeys_equal_raw_recompute(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """Journeys run by the worker (enroll, decide, deliver, finish) keep the counters exact."""
    await add_integration(api, section)
    spec = cart_campaign("Rollup e2e", steps=[step("S1"), step("S2", "P1D")])
    cid = await create_campaign(api, section, spec)
    for _ in range(3):
        dyid, uid = await reachable_user(api, section)
        await collect(api, section, dyid, add_to_cart("sku-1"))
        assert (await journey_result(env.client, section, cid, uid)).sent == 2
    now = datetime.now(UTC)
    span = (now - timedelta(days=30), now + timedelta(days=30))
    assert _compare(store, section.id, cid, [span]) == 3
    with store.session() as s:
        fast = aggregate(q.load(s, section.id, cid, *span, WINDOW), WINDOW)
    assert sum(fast.sends_by_day.values()) == 6, "both steps' sends were counted"


async def test_a_rebuild_keeps_the_attributions_of_purged_events(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Retention deletes raw events, but their purchases stay in the report (docs/reports.md): a
    rebuild recomputes what it can from the raw rows and keeps the attributions it cannot (it
    deleted them: purchases and revenue fell to 0)."""
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)
    for _, write in sorted(_plan(w, random.Random(11), 40), key=lambda a: a[0]):
        write()
    window = (T0 - timedelta(days=1), T0 + timedelta(days=10))
    with store.session() as s:
        before = _view(aggregate(q.load(s, section.id, cid, *window, WINDOW), WINDOW))
        kept = s.execute(select(ReportAttribution.event_id).where(ReportAttribution.campaign_id == cid)).scalars().all()
    assert before["revenue_by_day"] and kept, "the random data exercises attribution"
    with store.session() as s:
        s.execute(update(Event).where(col(Event.section_id) == section.id).values(dispatched=True))
    assert purge_events(store, T0 + timedelta(days=400)) > 0
    with store.session() as s:
        assert report_rollup.rebuild(s, [cid]) == 1
    with store.session() as s:
        after = _view(aggregate(q.load(s, section.id, cid, *window, WINDOW), WINDOW))
        again = s.execute(select(ReportAttribution.event_id).where(ReportAttribution.campaign_id == cid)).scalars().all()
    assert sorted(again) == sorted(kept)
    assert after == before
