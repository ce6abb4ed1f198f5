"""Cap reservations under contention: 40 concurrent sends against a cap of 5 grant exactly 5."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment

from domain.caps import CapPolicy
from store import reservations
from store.engine import Store
from store.reservations import SlotRequest, SlotVerdict
from store.tables import CapReservation
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    outbox,
    reachable_user,
)

POLICY = CapPolicy(max_messages=5, window=timedelta(hours=24))
CONTENDERS = 40


def _request(section: str, user: str, key: str, as_of: datetime) -> SlotRequest:
    return SlotRequest(key=key, section_id=section, user_id=user, channel="email", campaign_id="cmp_race",
                       priority=0, as_of=as_of, campaign_limit=None, campaign_period=timedelta(days=1))  # fmt: skip


def _reserve(store: Store, req: SlotRequest) -> SlotVerdict:
    with store.session() as s:  # one session and transaction per contender, like one decide activity each
        return reservations.reserve(s, req, POLICY, timedelta(hours=24))


def _race(store: Store, reqs: list[SlotRequest]) -> list[SlotVerdict | BaseException]:
    barrier = threading.Barrier(len(reqs))

    def go(req: SlotRequest) -> SlotVerdict | BaseException:
        barrier.wait()
        try:
            return _reserve(store, req)
        except BaseException as exc:  # noqa: BLE001  (reported, so "database is locked" fails the test)
            return exc

    with ThreadPoolExecutor(len(reqs)) as pool:
        return list(pool.map(go, reqs))


def test_forty_concurrent_reservations_grant_exactly_the_cap(store: Store) -> None:
    """40 simultaneous reservations for one user and channel: exactly 5 granted, 35 capped, no lock errors."""
    section, user = "sec_race_" + secrets.token_hex(3), "usr_" + secrets.token_hex(6)
    now = datetime.now(UTC)
    reqs = [_request(section, user, f"race:{i}", now) for i in range(CONTENDERS)]
    results = _race(store, reqs)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors[:3]
    verdicts = [r for r in results if isinstance(r, SlotVerdict)]
    assert sum(v.granted for v in verdicts) == POLICY.max_messages
    assert {v.reason for v in verdicts if not v.granted} == {"global_cap"}


def test_failed_send_gives_its_slot_back(store: Store) -> None:
    """Releasing a granted slot (the send failed for good) lets exactly one more send through."""
    section, user = "sec_race_" + secrets.token_hex(3), "usr_" + secrets.token_hex(6)
    now = datetime.now(UTC)
    granted = [_reserve(store, _request(section, user, f"k{i}", now)) for i in range(5)]
    assert all(v.granted for v in granted)
    assert not _reserve(store, _request(section, user, "k5", now)).granted
    with store.session() as s:
        reservations.release(s, "k2")
    results = _race(store, [_request(section, user, f"late{i}", now) for i in range(10)])
    assert sum(isinstance(r, SlotVerdict) and r.granted for r in results) == 1


def test_reservation_committed_first_with_a_later_clock_still_counts(store: Store) -> None:
    """Decisions commit in lock order, not clock order: 5 slots taken at t+2s leave none for a decision at t."""
    section, user = "sec_race_" + secrets.token_hex(3), "usr_" + secrets.token_hex(6)
    now = datetime.now(UTC)
    assert all(_reserve(store, _request(section, user, f"ahead{i}", now + timedelta(seconds=2))).granted for i in range(5))
    late = _reserve(store, _request(section, user, "behind", now))
    assert not late.granted and late.reason == "global_cap"


def test_retried_reservation_is_not_counted_twice(store: Store) -> None:
    """The same send key reserved concurrently (a retried decide) takes one slot, not several."""
    section, user = "sec_race_" + secrets.token_hex(3), "usr_" + secrets.token_hex(6)
    now = datetime.now(UTC)
    results = _race(store, [_request(section, user, "same-key", now) for _ in range(10)])
    assert all(isinstance(r, SlotVerdict) and r.granted for r in results), results
    others = [_reserve(store, _request(section, user, f"o{i}", now)) for i in range(5)]
    assert [v.granted for v in others] == [True, True, True, True, False]


async def test_forty_journeys_racing_for_one_user_send_exactly_the_cap(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """One add-to-cart starts 40 equal-priority journeys for one user: exactly 5 messages go out, 35 are capped."""
    await add_integration(api, section)
    cids = [await create_campaign(api, section, cart_campaign(name=f"C{i}")) for i in range(CONTENDERS)]
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    results = await asyncio.gather(*(journey_result(env.client, section, cid, uid, timeout=120) for cid in cids))
    outcomes = Counter(d.outcome for r in results for d in r.decisions)
    reasons = Counter(d.reason for r in results for d in r.decisions if d.outcome == "skipped")
    assert outcomes == {"sent": POLICY.max_messages, "skipped": CONTENDERS - POLICY.max_messages}, outcomes
    assert set(reasons) == {"global_cap"}, reasons
    assert len(await outbox(api, section)) == POLICY.max_messages


def _scenario(store: Store, section: str, now: datetime) -> list[SlotRequest]:
    """Users with slots already taken (at the cap, under it, by this campaign, released, this very key),
    and one request each (a batch's chunk: one section, one `as_of`)."""
    taken = {"full": 5, "four": 4, "none": 0, "mine": 2, "released": 5, "same": 1}
    with store.session() as s:
        for user, n in taken.items():
            for i in range(n):
                campaign = "cmp_batch" if user == "mine" else "cmp_other"
                reservations.reserve(s, SlotRequest(
                    key=f"{section}:{user}:{i}", section_id=section, user_id=f"{section}_{user}", channel="email",
                    campaign_id=campaign, priority=0, as_of=now - timedelta(hours=1), campaign_limit=None,
                    campaign_period=timedelta(days=1),
                ), POLICY, timedelta(hours=24))  # fmt: skip
        reservations.release(s, f"{section}:released:0")
    own = {"same": f"{section}:same:0"}  # a retried chunk: the slot is this request's already
    return [
        SlotRequest(key=own.get(user, f"{section}:{user}:new"), section_id=section, user_id=f"{section}_{user}",
                    channel="email", campaign_id="cmp_batch", priority=0, as_of=now,
                    campaign_limit=2 if user == "mine" else None, campaign_period=timedelta(days=1))
        for user in taken
    ]  # fmt: skip


def test_a_batch_of_reservations_decides_as_one_at_a_time(store: Store) -> None:
    """`reserve_many` (a batched run's chunk, activities/broadcast_plain.py) grants and refuses what
    `reserve` would, request by request, and takes the same slots."""
    now = datetime.now(UTC)
    one, many = "sec_one_" + secrets.token_hex(3), "sec_many_" + secrets.token_hex(3)
    singles = _scenario(store, one, now)
    batch = _scenario(store, many, now)
    alone = [_reserve(store, req) for req in singles]
    with store.session() as s:
        together = reservations.reserve_many(s, batch, POLICY, timedelta(hours=24))
    assert together == alone
    assert [v.granted for v in together] == [False, True, True, False, True, True]
    assert together[3].reason == "campaign_cap"

    def slots(section: str) -> list[tuple[str, bool]]:
        with store.session() as s:
            rows = s.exec(select(CapReservation).where(col(CapReservation.section_id) == section)).all()
            return sorted((r.key.split(":", 1)[1], r.released) for r in rows)

    assert slots(many) == slots(one)


def test_a_batch_of_reservations_racing_single_ones_keeps_the_cap(store: Store) -> None:
    """A chunk's reservations for 10 users race 40 single ones for the first of them: that user gets
    exactly 5 slots in all, however the two interleave."""
    section = "sec_race_" + secrets.token_hex(3)
    now = datetime.now(UTC)
    users = [f"usr_{i}_" + secrets.token_hex(3) for i in range(10)]
    chunk = [_request(section, u, f"chunk:{u}", now) for u in users]
    barrier = threading.Barrier(CONTENDERS + 1)

    def batch() -> list[SlotVerdict]:
        barrier.wait()
        with store.session() as s:
            return reservations.reserve_many(s, chunk, POLICY, timedelta(hours=24))

    def single(i: int) -> SlotVerdict:
        barrier.wait()
        return _reserve(store, _request(section, users[0], f"single:{i}", now))

    with ThreadPoolExecutor(CONTENDERS + 1) as pool:
        chunked = pool.submit(batch)
        singles = list(pool.map(single, range(CONTENDERS)))
    verdicts = chunked.result()
    assert all(v.granted for v in verdicts[1:])
    assert verdicts[0].granted + sum(v.granted for v in singles) == POLICY.max_messages
