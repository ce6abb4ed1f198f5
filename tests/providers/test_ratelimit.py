"""The per-integration rate limit is strict: at most ceil(rate) calls in any ceil(rate)/rate seconds.

The token bucket it replaces let a full bucket's `rate` calls go at once after an idle spell and
refilled during the same second: 51-52 calls in one second at 50/s. These tests look at every
window over the release times, on the real clock through `RateLimiter` (as the registry and
the delivery activity use it) and on a fake clock for the exact boundaries."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import pytest

from providers.ratelimit import RateLimiter, SlidingWindow


def assert_no_window_holds_more(stamps: Sequence[float], rate: float, slack: float = 0.0) -> None:
    """No window of ceil(rate)/rate seconds (less `slack`) holds more than ceil(rate) of `stamps`."""
    size, width = math.ceil(rate), math.ceil(rate) / rate - slack
    ordered = sorted(stamps)
    crowded = [(a, b) for a, b in zip(ordered, ordered[size:], strict=False) if b - a < width]
    assert not crowded, f"{size + 1} calls within {width:.3f} s: {crowded[:3]} in {ordered}"


async def released_at(limiter: RateLimiter, integration_id: str, rate: float, calls: int) -> list[float]:
    """Start `calls` acquisitions at once; each one's release time on the monotonic clock, in start order."""
    stamps = [0.0] * calls

    async def one(i: int) -> None:
        await limiter.acquire(integration_id, rate)
        stamps[i] = time.monotonic()  # no suspension since the release: this is its time

    await asyncio.gather(*(one(i) for i in range(calls)))
    return stamps


async def test_a_burst_after_idle_never_exceeds_the_rate_in_any_second() -> None:
    """Three seconds' worth at once on an idle 10/s integration: 10 in any second, in arrival
    order, and still the whole rate (the bucket let 10 go, then one every 100 ms: 20 in 1 s)."""
    limiter = RateLimiter()
    start = time.monotonic()
    stamps = await released_at(limiter, "int_burst", 10, 30)
    assert_no_window_holds_more(stamps, 10)
    assert stamps == sorted(stamps), "waiters are served in arrival order"
    assert stamps[9] - start < 0.1, "the first second's worth goes at once"
    assert 2.0 <= stamps[-1] - start < 2.5, "no slower than the rate (plus its margin)"
    # After another idle spell the window is empty again: a full second's worth goes at once.
    await asyncio.sleep(1.1)
    again = await released_at(limiter, "int_burst", 10, 10)
    assert again[-1] - again[0] < 0.1
    assert_no_window_holds_more(stamps + again, 10)


async def test_a_fractional_rate_spreads_its_window() -> None:
    """2.5/s: at most 3 calls in any 1.2 s (the bucket let 2 go, then a third 200 ms later)."""
    stamps = await released_at(RateLimiter(), "int_frac", 2.5, 7)
    assert_no_window_holds_more(stamps, 2.5)
    assert stamps[-1] - stamps[0] < 2.4 + 0.3


async def test_a_cancelled_waiter_takes_no_slot_and_holds_no_one_up() -> None:
    """At 2/s, two calls go; of three waiters, the first is cancelled: the other two go when the
    window opens (a cancelled waiter counted would push the last one second later)."""
    limiter = RateLimiter()
    start = time.monotonic()
    await released_at(limiter, "int_cancel", 2, 2)
    first = asyncio.ensure_future(limiter.acquire("int_cancel", 2))
    rest = asyncio.ensure_future(released_at(limiter, "int_cancel", 2, 2))
    await asyncio.sleep(0.1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    stamps = await rest
    assert all(1.0 <= s - start < 1.3 for s in stamps), [s - start for s in stamps]
    assert_no_window_holds_more([start, start, *stamps], 2)


async def test_an_edited_limit_counts_the_calls_already_released() -> None:
    """Lowered from 10/s to 2/s right after 10 calls went: the next call waits out the window."""
    limiter = RateLimiter()
    start = time.monotonic()
    await released_at(limiter, "int_edit", 10, 10)
    await limiter.acquire("int_edit", 2)
    assert time.monotonic() - start >= 1.0


class FakeTime:
    """A clock that a sleep moves forward: the window's exact boundaries, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)  # let others queue and cancel meanwhile
        self.now += seconds


async def fake_releases(window: SlidingWindow, fake: FakeTime, calls: int) -> list[float]:
    stamps: list[float] = []

    async def one() -> None:
        await window.acquire()
        stamps.append(fake.now)

    await asyncio.gather(*(one() for _ in range(calls)))
    return stamps


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (50, [0.0] * 50 + [1.0] * 50 + [2.0] * 50),
        (0.5, [0.0, 2.0, 4.0]),
        (2.5, [0.0] * 3 + [1.2] * 3 + [2.4]),
        (1, [0.0, 1.0, 2.0]),
    ],
)
async def test_releases_on_the_window_boundaries(rate: float, expected: list[float]) -> None:
    """Without the margin: ceil(rate) at once, the next ones exactly a window after, one sleep per wait."""
    fake = FakeTime()
    window = SlidingWindow(rate, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    stamps = await fake_releases(window, fake, len(expected))
    assert [round(s - 1000.0, 9) for s in stamps] == expected
    assert len(fake.sleeps) == len(set(expected)) - 1, "one sleep per window: no busy loop"


async def test_the_margin_widens_every_window() -> None:
    fake = FakeTime()
    window = SlidingWindow(2, margin=0.02, clock=fake.clock, sleep=fake.sleep)
    stamps = await fake_releases(window, fake, 5)
    assert [round(s - 1000.0, 9) for s in stamps] == [0.0, 0.0, 1.02, 1.02, 2.04]


async def test_the_default_margin_absorbs_a_busy_workers_arrival_jitter() -> None:
    """A trial's fan-out at 30/s: now and then one call reached the vendor 25-27 ms late and the next
    on time; with a 20 ms margin that put 31 arrivals in one second. Every call a window (30 calls)
    after a late one is on time here, the worst case for the vendor's count."""
    fake = FakeTime()
    rate = 30
    window = SlidingWindow(rate, clock=fake.clock, sleep=fake.sleep)  # the default margin
    releases = sorted(await fake_releases(window, fake, 6 * rate))
    late = 0.027
    arrivals = sorted(at + (late if (n // rate) % 2 == 0 else 0.0) for n, at in enumerate(releases))
    most = max(sum(1 for a in arrivals if start <= a < start + 1.0) for start in arrivals)
    assert most <= rate, f"{most} arrivals in one second at {rate}/s"


async def test_a_cancelled_sleeper_hands_over_without_a_slot() -> None:
    """The waiter holding the queue is cancelled mid-sleep: the next one goes at the same boundary."""
    fake = FakeTime()
    window = SlidingWindow(1, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    await window.acquire()
    sleeper = asyncio.ensure_future(window.acquire())
    follower = asyncio.ensure_future(fake_releases(window, fake, 1))
    await asyncio.sleep(0)  # the sleeper takes the queue and starts its sleep
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert await follower == [1001.0]


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(0)
