"""One shard's batch delivered by several senders at once (`BroadcastActivities.deliver_batch`).

One recipient at a time, a run had one provider call in flight per shard: against a vendor
answering in 50 ms, 2 shards sent <= 40 messages/s. `FanOut` runs up to `concurrency` senders
over one batch, each taking the next recipient (one sender per recipient: `next()` on a shared
iterator has no await). What it keeps from the one-at-a-time loop:
- a throttled shard calls on its phase of the run's grid, one call per slot, each slot reserved
  before its call (`SlotGrid`), and a call whose slot passed while it was prepared (or while its
  sender waited for the loop: a loaded machine) takes a fresh slot, never calls late, so no
  1-second window holds more than the rate and one (the calls at both of its edges);
- a vendor's pause (a 429 with Retry-After) stops the shard starting calls: the calls in flight
  end and are recorded, the recipients prepared but not yet called are withdrawn;
- the batch's first provider call goes alone (see `run`);
- a campaign paused or archived (`stop`) ends the batch at once, as a vendor's pause does;
- a store step that has begun ends in its thread, committed or rolled back, before the activity
  ends, even when it is cancelled (`settled`): a retry of the batch never runs beside it.
After the first, the senders waiting for a recipient get a chunk prepared together, one recipient
each (`prepare_chunk`: activities/broadcast_plain.py; not for a throttled shard, which prepares
each recipient just before its slot), and accepted calls are recorded in groups (`GroupCommit`):
one worker process was bound by the statements of two transactions per recipient. A prepared
recipient whose call is not made (paused, cancelled) is withdrawn, as one recipient's preparation
was (`run`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Generic, TypeVar

# A throttled recipient is prepared this long before its call slot: enough for its transaction on a
# busy store, so the call keeps its slot; short, so few send rows are in flight before their calls.
PREPARE_LEAD = 0.25

T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P")


def first_slot(interval: float, shard: int, shards: int, now: float | None = None) -> float:
    """The next wall-clock time on this shard's phase of a grid every `interval` seconds.

    Each shard gets 1/shards of the run's rate; started together, they called the provider in
    bursts of one call per shard (a throttle of 1/s with 2 shards: two calls 40 ms apart every
    2 s, which a vendor enforcing 1/s refuses). Shard k keeps to times k/shards of an interval
    after the grid's ticks, so the run's calls are evenly spaced at its whole rate. Wall-clock,
    not monotonic: the shards run as separate activities, possibly in different workers."""
    offset = (shard % max(1, shards)) / max(1, shards) * interval
    now = time.time() if now is None else now
    return math.ceil((now - offset) / interval) * interval + offset


class SlotGrid:
    """A throttled shard's provider-call slots: its grid's ticks from now on, each given once.

    Senders reserve a slot before their call and call at it, so calls keep the spacing of the
    one-at-a-time loop however many senders wait; a slot given up (the shard paused, or passed
    before its sender could call) stays a gap. `clock`: wall-clock seconds (a test's fake one)."""

    def __init__(self, interval: float, shard: int, shards: int, clock: Callable[[], float] = time.time) -> None:
        self.interval, self.shard, self.shards = interval, shard, shards
        self.clock = clock
        self._next = 0.0

    def reserve(self) -> float:
        """The wall-clock time of the next free slot at or after now, now reserved (no await: one
        sender at a time)."""
        slot = max(self._next, first_slot(self.interval, self.shard, self.shards, self.clock()))
        self._next = slot + self.interval
        return slot

    def on_time(self, slot: float) -> bool:
        """Whether a call started now keeps to `slot`: less than one of the run's intervals (this
        shard's over the shards: the run's calls are that far apart) after it. Senders woken late
        together (their preparation was slow, the machine loaded) called at once, up to 72 calls in
        a second at 50/s; kept to this, the calls in any second had slots within one second and one
        interval, at most the rate and one."""
        return 0.0 <= self.clock() - slot < self.interval / max(1, self.shards)


async def settled(step: Callable[[], T], undo: Callable[[T], Awaitable[object]] | None = None) -> T:
    """`step()` in a thread, waited for to its end even if the caller is cancelled meanwhile.

    A store transaction begun by the activity is then committed or rolled back before the
    activity ends, and a retry of the batch never runs beside it. On cancellation, `undo` gets
    the step's result (what was committed for nothing: a send row prepared for a call that will
    not be made) before the cancellation is raised."""
    task = asyncio.ensure_future(asyncio.to_thread(step))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if undo is not None and not task.cancelled() and task.exception() is None:
            await undo(task.result())
        raise


class FanOut(Generic[P]):
    """The senders of one batch and what they share: the recipients still to take, prepared ahead in
    chunks (`prepare_chunk`, activities/broadcast_plain.py), the grid, the pause."""

    def __init__(
        self,
        users: Iterable[str],
        grid: SlotGrid | None,
        prepare_chunk: Callable[[list[str]], Awaitable[dict[str, P]]] | None = None,
        withdraw_prepared: Callable[[P], Awaitable[object]] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._users = iter(users)
        self._grid = grid
        self._clock = grid.clock if grid is not None else time.time
        self._sleep = sleep  # a test's fake one, with the grid's clock
        self.pause_until: datetime | None = None
        self.stopped_reason: str | None = None  # `stop`
        self._halt = asyncio.Event()  # set once paused or stopped: wakes the senders waiting for a slot
        self._answered = False  # a provider call of the batch has been answered (`run`)
        self._prepare_chunk = prepare_chunk
        self._withdraw_prepared = withdraw_prepared
        self._taken: deque[tuple[str, P | None]] = deque()  # taken from `users`, prepared if the chunk could
        self._preparing: asyncio.Future[None] | None = None
        self._waiting = 0  # senders waiting in `next` for a recipient

    def pause(self, until: datetime | None) -> None:
        """The vendor throttles everyone until `until`: no sender starts a call from now on."""
        if until is not None:
            self.pause_until = until if self.pause_until is None else max(self.pause_until, until)
            self._halt.set()

    def stop(self, reason: str) -> None:
        """The campaign is no longer active (paused, archived: `reason`): no sender starts a call or
        prepares a recipient from now on, and none waits for a slot; the caller skips the rest."""
        self.stopped_reason = self.stopped_reason or reason
        self._halt.set()

    @property
    def stopped(self) -> bool:
        return self.stopped_reason is not None

    @property
    def halted(self) -> bool:
        return self.stopped or self.pause_until is not None

    async def _until(self, at: float) -> None:
        """Sleep until `at` (the grid's clock), or less if the shard halts meanwhile: the senders
        waiting for their slots (up to 2 s ahead) end at once, the batch with them."""
        sleeper = asyncio.ensure_future(self._sleep(max(0.0, at - self._clock())))
        halted = asyncio.ensure_future(self._halt.wait())
        try:
            await asyncio.wait([sleeper, halted], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            halted.cancel()

    def next_user(self) -> str | None:
        """The next recipient to deliver, for one sender only; None once paused or none is left."""
        return None if self.halted else next(self._users, None)

    async def next(self, size: int) -> tuple[str, P | None] | None:
        """The next recipient for one sender, with what its chunk's preparation made of it (None: the
        sender prepares it alone); None once paused or none is left. When none is taken, the senders
        waiting for one (up to `size`) get a chunk prepared together: one recipient each, at once, so
        no send row waits in flight for a free sender (a worker killed meanwhile would leave it
        flagged a possible duplicate that was never called)."""
        self._waiting += 1
        try:
            while not self._taken:
                if self._preparing is not None:
                    await asyncio.wait([self._preparing])
                    continue
                await asyncio.sleep(0)  # the senders whose calls ended in this turn of the loop join the chunk
                if not self._taken and self._preparing is None and not self._start_chunk(min(size, self._waiting)):
                    return None
        finally:
            self._waiting -= 1
        return None if self.halted else self._taken.popleft()

    def _start_chunk(self, size: int) -> bool:
        """Take up to `size` more recipients and start preparing them; False if none was left."""
        users: list[str] = []
        while len(users) < size and (user_id := self.next_user()) is not None:
            users.append(user_id)
        if users:
            self._preparing = asyncio.ensure_future(self._prepare(users))
        return bool(users)

    def reserve_turn(self) -> float | None:
        """A throttled shard's next call slot, reserved now for one recipient (None: not throttled)."""
        return self._grid.reserve() if self._grid is not None else None

    async def before_turn(self, slot: float | None) -> bool:
        """Wait until `PREPARE_LEAD` before `slot`, then the recipient is prepared: its send row goes in
        flight only just before its call, not while it waits its turn (up to 2 s at the shard's rate);
        False if the shard paused (or stopped) meanwhile (nothing prepared: the recipient stays pending)."""
        if slot is not None and not self.halted:
            await self._until(slot - PREPARE_LEAD)
        return not self.halted

    async def _prepare(self, users: list[str]) -> None:
        try:
            prepared = await self._prepare_chunk(users) if self._prepare_chunk is not None and len(users) > 1 else {}
        finally:
            self._preparing = None
        self._taken.extend((user_id, prepared.get(user_id)) for user_id in users)

    async def run(self, deliver: Callable[[str, P | None], Awaitable[None]], concurrency: int) -> None:
        """Deliver every recipient with up to `concurrency` senders; a sender's failure (or the
        activity's cancellation) cancels the others and waits for their clean-up before it is raised.

        The first provider call goes alone, the others once it is answered: a shard resuming after
        a vendor's Retry-After (or a first batch against a vendor already throttling) spends one
        refused call, not one per sender, and a campaign paused (or a recipient gone) as its
        first call is answered stops the batch before the others are prepared. The recipients
        before it that made no call (skipped, deferred) go alone too, one after the other: the
        first one only was the probe, and a skipped one let every sender call at once (64 calls
        in 4 ms into a vendor answering 429). The others are
        prepared in chunks of `concurrency`; a prepared recipient no sender called (the shard
        paused, a sender failed, the activity was cancelled) is withdrawn before the end."""
        try:
            await self._run(deliver, max(1, concurrency))
        finally:
            await asyncio.shield(self._withdraw_taken())

    async def _run(self, deliver: Callable[[str, P | None], Awaitable[None]], concurrency: int) -> None:
        while not self._answered:
            first = await self.next(1)
            if first is None:
                return
            await deliver(*first)

        async def sender() -> None:
            while (taken := await self.next(concurrency)) is not None:
                await deliver(*taken)

        senders = [asyncio.create_task(sender()) for _ in range(concurrency)]
        try:
            await asyncio.wait(senders, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in senders:
                task.cancel()  # none when all ended; else the others of a failed one, or all (cancelled)
            await asyncio.wait(senders)  # their withdrawals and records end first
        for task in senders:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def _withdraw_taken(self) -> None:
        if self._preparing is not None:
            await asyncio.wait([self._preparing])  # a chunk being prepared is committed first
        while self._taken:
            _, prepared = self._taken.popleft()
            if prepared is not None and self._withdraw_prepared is not None:
                await self._withdraw_prepared(prepared)

    async def call(
        self, make_call: Callable[[], Awaitable[T]], withdraw: Callable[[], Awaitable[object]], slot: float | None
    ) -> T | None:
        """Make one provider call at its turn (`slot`, reserved by `reserve_turn`; None: at once); None
        (after `withdraw`) if the shard paused first. Cancelled before its turn, the call is withdrawn
        too; cancelled during the call, its outcome is unknown and the send stays in flight (a retry
        repeats it under the same key). A call whose slot passed before it could start (its
        preparation, or its wake-up on a loaded machine, was late) takes a fresh one, at or after
        now (`SlotGrid.on_time`): late senders calling at once made bursts above the rate."""
        if slot is not None and self._grid is not None:
            try:
                while not self.halted:
                    await self._until(slot)
                    if self.halted or self._grid.on_time(slot):
                        break
                    if self._clock() >= slot:  # passed: a fresh slot (woken early: the same one)
                        slot = self._grid.reserve()
            except asyncio.CancelledError:
                await withdraw()
                raise
        if self.halted:
            await withdraw()
            return None
        try:
            return await make_call()
        finally:
            self._answered = True  # answered, or cut (cancelled, failed): the others may go


class GroupCommit(Generic[T, R]):
    """Records written together: each sender submits one and waits for its result. The first
    submitted starts a write; what is submitted while a write runs goes in the next one, so the
    groups grow with the load and nothing waits for a timer. `write` runs in a thread (`settled`)
    and returns one result per item."""

    def __init__(self, write: Callable[[list[T]], list[R]]) -> None:
        self._write = write
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Future[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue, []
                try:
                    results = await settled(partial(self._write, [item for item, _ in group]))
                except Exception as err:  # each waiting sender raises it
                    for _, future in group:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    if not future.done():  # not if its sender was cancelled meanwhile
                        future.set_result(result)
        finally:
            self._writer = None

    async def closed(self) -> None:
        """Wait until everything submitted is written, even if the caller is cancelled meanwhile: a
        call the vendor accepted is recorded before the activity ends."""
        while self._writer is not None:
            await asyncio.shield(asyncio.wait([self._writer]))
