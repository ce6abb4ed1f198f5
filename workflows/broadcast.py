"""BroadcastWorkflow: one batched campaign run, from its send time to the last recipient.

Waits for the run's send time (the campaign schedule), lists the audience for scheduled
campaigns, then drives `deliver_batch` activities over its shards in parallel until no
recipient is due; recipients waiting for their send window (quiet hours in their timezone)
are picked up when the earliest window opens. Progress is a query and the run's row; a
crash anywhere resumes from the recipients' statuses, never re-sending a finished one.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.broadcast import BroadcastActivities
    from workflows.feed_models import BatchRequest, BatchResult, BroadcastInput, RunProgress

STORE_TIMEOUT = timedelta(minutes=1)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
BATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=["NotFound"],
)  # fmt: skip


@workflow.defn
class BroadcastWorkflow:
    def __init__(self) -> None:
        self.progress = RunProgress(run_id="")

    @workflow.query
    def current_progress(self) -> RunProgress:
        return self.progress

    @workflow.run
    async def run(self, inp: BroadcastInput) -> RunProgress:
        self.progress.run_id = inp.run_id
        if inp.send_at is not None and inp.send_at > workflow.now():
            self._state("waiting", f"waiting until {inp.send_at.isoformat()}")
            await workflow.sleep(inp.send_at - workflow.now(), summary="until the campaign schedule")
        if inp.plan_scheduled:
            await workflow.execute_activity_method(
                BroadcastActivities.plan_audience,
                inp,
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RETRY,
                summary="list the audience",
            )
        await self._set_state(inp, "sending")
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
                workflow.continue_as_new(inp.model_copy(update={"send_at": None, "plan_scheduled": False}))
            if any(r.more_due for r in results):
                continue
            waits = [r.next_due for r in results if r.next_due is not None]
            if not waits:
                break
            self._state("waiting", f"recipients waiting for their send window until {min(waits).isoformat()}")
            await workflow.sleep(
                max(min(waits) - workflow.now(), timedelta(seconds=1)), summary="send window"
            )
        await self._set_state(inp, "done")
        return self.progress

    def _state(self, state: str, details: str) -> None:
        self.progress.state = state
        workflow.set_current_details(details)

    async def _set_state(self, inp: BroadcastInput, state: str) -> None:
        self._state(state, state)
        await workflow.execute_activity_method(
            BroadcastActivities.set_state,
            args=[inp.run_id, state, workflow.now()],
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=RETRY,
            summary=f"run {state}",
        )
