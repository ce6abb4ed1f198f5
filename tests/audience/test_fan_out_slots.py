"""A throttled shard's call slots on a loaded machine (activities/fan_out.py `SlotGrid`, `FanOut.call`),
and the batch's first provider call going alone. Virtual time: a fake clock and a fake sleep whose
wake-ups come late, sometimes together (an event loop blocked for a while), and recipients whose
preparation takes longer than the lead it is given. Deterministic (seeded), no store, no Temporal."""

from __future__ import annotations

import asyncio
import heapq
import random

from activities.fan_out import FanOut, SlotGrid


class VirtualTime:
    """Wall-clock seconds and sleeps that end when the driver says: late by `late()`, and now and
    then after a stall of the whole loop, when every sleep due by then wakes at once."""

    def __init__(self, seed: int, stall_every: int = 7, stall: float = 0.45, late: float = 0.03) -> None:
        self.now = 1_000_000.0
        self._rand = random.Random(seed)
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._stall_every, self._stall, self._late = stall_every, stall, late

    def clock(self) -> float:
        return self.now

    def uniform(self, low: float, high: float) -> float:
        return self._rand.uniform(low, high)

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), self._seq, future))
        await future

    async def drive(self, main: asyncio.Task[None]) -> None:
        steps = 0
        while not main.done():
            for _ in range(30):  # every task runs until it sleeps again
                await asyncio.sleep(0)
            if main.done() or not self._timers:
                continue
            steps += 1
            when = self._timers[0][0]
            woken = max(self.now, when) + self._rand.uniform(0.0, self._late)
            if steps % self._stall_every == 0:
                woken += self._rand.uniform(0.0, self._stall)  # the loop was blocked: all due wake at once
            self.now = woken
            while self._timers and self._timers[0][0] <= woken:
                _, _, future = heapq.heappop(self._timers)
                if not future.done():
                    future.set_result(None)
        await main


def _most_in_a_second(calls: list[float]) -> int:
    at = sorted(calls)
    return max((sum(1 for b in at[i:] if b - a < 1.0) for i, a in enumerate(at)), default=0)


async def _throttled_shard(
    vt: VirtualTime, calls: list[float], users: int, rate: float, shard: int, shards: int
) -> None:
    """One shard's batch as `BroadcastActivities._deliver_one` runs it: a slot reserved, the recipient
    prepared `PREPARE_LEAD` before it (here often slower than that), the call at its slot."""
    fan: FanOut[None] = FanOut(
        [f"u{shard}-{i}" for i in range(users)], SlotGrid(1.0 / rate, shard, shards, clock=vt.clock), sleep=vt.sleep
    )

    async def make_call() -> None:
        calls.append(vt.now)
        await vt.sleep(vt.uniform(0.02, 0.3))  # the vendor's answer

    async def withdraw() -> None:
        return None

    async def deliver(_user: str, _prepared: None) -> None:
        slot = fan.reserve_turn()
        if not await fan.before_turn(slot):
            return
        await vt.sleep(vt.uniform(0.0, 0.6))  # its transaction on a busy store
        await fan.call(make_call, withdraw, slot)

    await fan.run(deliver, int(rate * 2) + 1)


async def test_late_senders_never_exceed_the_rate_in_any_second() -> None:
    """50/s on one shard: senders prepared late, woken late and together, call in a fresh slot, never
    in one that passed; no sliding second holds more than 51 calls, and everyone is called."""
    for seed in range(4):
        vt, calls = VirtualTime(seed), list[float]()
        await vt.drive(asyncio.create_task(_throttled_shard(vt, calls, 400, 50.0, 0, 1)))
        assert len(calls) == 400
        assert _most_in_a_second(calls) <= 51, (seed, _most_in_a_second(calls))


async def test_late_senders_of_two_shards_keep_the_run_rate_together() -> None:
    """A run at 50/s in two shards of 25/s, each on its phase of the grid: together, never more than 51
    calls in a sliding second however late their senders."""
    for seed in range(4):
        vt, calls = VirtualTime(100 + seed), list[float]()

        async def both(vt: VirtualTime, calls: list[float]) -> None:
            await asyncio.gather(*(_throttled_shard(vt, calls, 200, 25.0, k, 2) for k in range(2)))

        await vt.drive(asyncio.create_task(both(vt, calls)))
        assert len(calls) == 400
        assert _most_in_a_second(calls) <= 51, (seed, _most_in_a_second(calls))


async def test_a_slow_rate_keeps_its_spacing_when_woken_late() -> None:
    """5/s: a call never follows the one before it by less than most of an interval."""
    vt, calls = VirtualTime(7, stall=1.5), list[float]()
    await vt.drive(asyncio.create_task(_throttled_shard(vt, calls, 60, 5.0, 0, 1)))
    at = sorted(calls)
    assert len(at) == 60 and _most_in_a_second(at) <= 6
    assert all(b - a > 0.0 for a, b in zip(at, at[1:], strict=False)), at


async def test_the_first_call_goes_alone_even_after_recipients_that_made_none() -> None:
    """The probe is the first recipient that calls the provider: the ones before it (skipped) made no
    call, and nobody else calls until that call is answered."""
    events: list[str] = []
    answered = asyncio.Event()
    fan: FanOut[None] = FanOut([f"u{i}" for i in range(40)], None)

    async def make_call() -> None:
        events.append("call")
        await asyncio.sleep(0.05)
        answered.set()
        events.append("answer")

    async def withdraw() -> None:
        return None

    async def deliver(user: str, _prepared: None) -> None:
        if user in ("u0", "u1", "u2"):
            await asyncio.sleep(0.01)  # skipped: opted out, no call
            return
        await fan.call(make_call, withdraw, None)

    await fan.run(deliver, 16)
    assert events.count("call") == 37
    assert events[:2] == ["call", "answer"], events[:5]
