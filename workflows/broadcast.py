"""BroadcastWorkflow: one batched campaign run, from its send time to the last recipient.

Waits for the run's send time (the campaign schedule), lists the audience for scheduled
campaigns (or ends unsent when an edit moved its slot or paused its campaign meanwhile), then drives `deliver_batch` activities over its shards in parallel until no
recipient is due; recipients waiting for their send window (quiet hours in their timezone)
are picked up when the earliest window opens. Progress is a query and the run's row; a
crash anywhere resumes from the recipients' statuses, never re-sending a finished one.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.broadcast import ENDED_UNSENT, BroadcastActivities
    from workflows.feed_models import BatchRequest, BatchResult, BroadcastInput, RunProgress

# Each shard loops on its own (a shard with no recipient due sleeps on its own timer) instead of
# every shard's batch in lock-step rounds; the run row says "waiting" while every shard sleeps.
SHARD_LOOPS_PATCH = "broadcast-shard-loops"
# A scheduled run whose slot an edit moved or removed (or whose campaign is no longer active) when it
# wakes ends there, unsent: `plan_audience` answers a negative count (`ENDED_UNSENT`) and has written
# the run row's state.
SLOT_CHECK_PATCH = "broadcast-slot-check"
# A pause or archive of the campaign signals its open runs (`campaign_stopped`, api/routes/campaigns.py):
# a shard sleeping on a timer (a vendor's Retry-After, up to an hour; a send window) wakes, and every
# batch from then on ends the run (`BatchRequest.campaign_stopped`), even once the campaign is active
# again: the run's "waiting" no longer outlasts the pause, and an activation does not resume it. The
# flag rides a continue-as-new in `BroadcastInput.campaign_stopped` (a shard woken by the signal may
# leave for the continue-as-new before any batch carried it; the next run then sent the rest).
CAMPAIGN_STOPPED_PATCH = "broadcast-campaign-stopped"
STORE_TIMEOUT = timedelta(minutes=1)
# A batch heartbeats every 5 s while it runs (activities/broadcast.py HEARTBEAT_EVERY): a worker
# killed mid-batch is noticed, and its batch retried, 20 s later (it was a minute, during which
# the shard sent nothing). A batch scheduled before keeps the timeout it was scheduled with.
BATCH_HEARTBEAT_TIMEOUT = timedelta(seconds=20)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
BATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=["NotFound"],
)  # fmt: skip


@workflow.defn
class BroadcastWorkflow:
    def __init__(self) -> None:
        self.progress = RunProgress(run_id="")
        # Patched path (SHARD_LOOPS_PATCH): shards still looping, those sleeping until a recipient is
        # due, whether a continue-as-new was asked, and the run row's state as last written.
        self._live: set[int] = set()
        self._waiting: set[int] = set()
        self._continue = False
        self._recording = False
        self._recorded = "sending"
        self._stopped: str | None = None  # `campaign_stopped`: campaign_paused | campaign_archived

    @workflow.signal
    def campaign_stopped(self, reason: str) -> None:
        """The campaign was paused or archived (`reason`): the run ends at its shards' next batches."""
        if workflow.patched(CAMPAIGN_STOPPED_PATCH):  # a signal an older worker ignored stays ignored
            self._stopped = self._stopped or reason

    @workflow.query
    def current_progress(self) -> RunProgress:
        return self.progress

    @workflow.run
    async def run(self, inp: BroadcastInput) -> RunProgress:
        self.progress.run_id = inp.run_id
        self._stopped = self._stopped or inp.campaign_stopped  # signalled to the run before it continued as new
        if inp.send_at is not None and inp.send_at > workflow.now():
            self._state("waiting", f"waiting until {inp.send_at.isoformat()}")
            await workflow.sleep(inp.send_at - workflow.now(), summary="until the campaign schedule")
        if inp.plan_scheduled:
            planned = await workflow.execute_activity_method(
                BroadcastActivities.plan_audience,
                inp,
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RETRY,
                summary="list the audience",
            )
            if planned < 0 and workflow.patched(SLOT_CHECK_PATCH):
                ended = next(state for state, code in ENDED_UNSENT.items() if code == planned)
                self._state(ended, f"{ended}: not sent (the reason: GET /runs/{inp.run_id})")
                return self.progress
        await self._set_state(inp, "sending")
        if workflow.patched(SHARD_LOOPS_PATCH):
            await self._deliver_by_shard(inp)
        else:
            await self._deliver_in_rounds(inp)
        await self._set_state(inp, "done")
        return self.progress

    async def _deliver_in_rounds(self, inp: BroadcastInput) -> None:
        """Runs started before SHARD_LOOPS_PATCH: every shard's batch in lock-step rounds."""
        while True:
            now = workflow.now()
            results: list[BatchResult] = await asyncio.gather(
                *(
                    workflow.execute_activity_method(
                        BroadcastActivities.deliver_batch,
                        BatchRequest(
                            run_id=inp.run_id, shard=shard, shards=inp.shards, as_of=now, limit=inp.batch_size
                        ),
                        start_to_close_timeout=timedelta(minutes=30),
                        heartbeat_timeout=timedelta(minutes=1),
                        retry_policy=BATCH_RETRY,
                        summary=f"deliver a batch of shard {shard}",
                    )
                    for shard in range(inp.shards)
                )
            )
            self.progress.batches += 1
            self.progress.sent = max(r.run_sent for r in results)
            self.progress.skipped = max(r.run_skipped for r in results)
            self.progress.failed = max(r.run_failed for r in results)
            workflow.set_current_details(
                f"sent {self.progress.sent}, skipped {self.progress.skipped}, failed {self.progress.failed}"
            )
            if workflow.info().is_continue_as_new_suggested():
                # Big runs: a fresh history; recipients' statuses in the store carry the progress.
                workflow.continue_as_new(self._next_input(inp))
            if any(r.more_due for r in results):
                continue
            waits = [r.next_due for r in results if r.next_due is not None]
            if not waits:
                break
            self._state("waiting", f"recipients waiting for their send window until {min(waits).isoformat()}")
            await workflow.sleep(
                max(min(waits) - workflow.now(), timedelta(seconds=1)), summary="send window"
            )

    def _next_input(self, inp: BroadcastInput) -> BroadcastInput:
        """The continue-as-new's input: listed and past its send time, and carrying a `campaign_stopped`
        received (a shard woken by it may leave for the continue-as-new before any batch ended the run;
        without it the next run would send the rest once the campaign is active again)."""
        return inp.model_copy(update={"send_at": None, "plan_scheduled": False, "campaign_stopped": self._stopped})

    async def _deliver_by_shard(self, inp: BroadcastInput) -> None:
        """Each shard loops on its own: a batch, then at once the next while recipients are due,
        else a timer until its earliest waiting recipient (a send window, a recipient's retry
        backoff, a vendor's Retry-After). A shard never waits for the others' batches, and the
        progress is updated after every batch."""
        self._live = set(range(inp.shards))
        await asyncio.gather(*(self._shard_loop(inp, shard) for shard in range(inp.shards)))
        await workflow.wait_condition(lambda: not self._recording)  # the run row's last state first
        if self._continue:
            # Big runs: a fresh history; recipients' statuses in the store carry the progress.
            workflow.continue_as_new(self._next_input(inp))

    async def _shard_loop(self, inp: BroadcastInput, shard: int) -> None:
        while not self._continue:
            result: BatchResult = await workflow.execute_activity_method(
                BroadcastActivities.deliver_batch,
                BatchRequest(
                    run_id=inp.run_id, shard=shard, shards=inp.shards, as_of=workflow.now(), limit=inp.batch_size,
                    campaign_stopped=self._stopped,
                ),
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=BATCH_HEARTBEAT_TIMEOUT,
                retry_policy=BATCH_RETRY,
                summary=f"deliver a batch of shard {shard}",
            )
            self._note(result)
            if workflow.info().is_continue_as_new_suggested():
                self._continue = True  # every shard stops after its batch (or wakes from its wait)
            elif result.more_due:
                continue
            elif result.next_due is not None:
                await self._wait(inp, shard, result.next_due)
                continue
            break
        self._live.discard(shard)
        await self._record_state(inp)

    async def _wait(self, inp: BroadcastInput, shard: int, until: datetime) -> None:
        """Sleep until the shard's next recipient is due; the run is "waiting" while every shard
        still working sleeps. A continue-as-new wakes it (the next run's shard sleeps on), and so does
        the campaign's pause or archive (`campaign_stopped`: the next batch ends the run)."""
        self._waiting.add(shard)
        await self._record_state(inp)
        try:
            await workflow.wait_condition(
                lambda: self._continue or self._stopped is not None,
                timeout=max(until - workflow.now(), timedelta(seconds=1)),
                timeout_summary=f"shard {shard}: next recipient due",
            )
        except asyncio.TimeoutError:
            pass  # the recipient is due
        self._waiting.discard(shard)
        await self._record_state(inp)

    def _note(self, result: BatchResult) -> None:
        """A batch's result: the run's totals (read from the store after it; monotonic)."""
        self.progress.batches += 1
        self.progress.sent = max(self.progress.sent, result.run_sent)
        self.progress.skipped = max(self.progress.skipped, result.run_skipped)
        self.progress.failed = max(self.progress.failed, result.run_failed)
        workflow.set_current_details(
            f"sent {self.progress.sent}, skipped {self.progress.skipped}, failed {self.progress.failed}"
        )

    async def _record_state(self, inp: BroadcastInput) -> None:
        """Keep the run row's state in step with the shards: "waiting" while every shard still
        working sleeps, else "sending". One writer at a time, so the row ends with the last state."""
        waiting = bool(self._live) and self._live <= self._waiting
        self.progress.state = "waiting" if waiting else "sending"
        if waiting:
            workflow.set_current_details(f"sent {self.progress.sent}; recipients waiting for their time")
        if self._recording:
            return  # the running writer records the newest state after its write
        self._recording = True
        try:
            while self._recorded != self.progress.state:
                state = self.progress.state
                await self._write_state(inp, state)
                self._recorded = state
        finally:
            self._recording = False

    def _state(self, state: str, details: str) -> None:
        self.progress.state = state
        workflow.set_current_details(details)

    async def _set_state(self, inp: BroadcastInput, state: str) -> None:
        self._state(state, state)
        await self._write_state(inp, state)

    async def _write_state(self, inp: BroadcastInput, state: str) -> None:
        """The run row's state (`BroadcastActivities.set_state`)."""
        await workflow.execute_activity_method(
            BroadcastActivities.set_state,
            args=[inp.run_id, state, workflow.now()],
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=RETRY,
            summary=f"run {state}",
        )
