"""FeedSyncWorkflow: stream a feed into staging, apply it atomically, start the runs it triggers.

A product feed sync that lowers prices or changes attributes starts Price Drop / Change in
Product Attribute runs; a user-data sync starts Change in User Attribute runs. Each run is a
child BroadcastWorkflow (abandoned on close: it may wait days for the campaign schedule).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.broadcast import BroadcastActivities
    from activities.feeds import FeedActivities
    from workflows.broadcast import BroadcastWorkflow
    from workflows.feed_models import (
        BroadcastInput,
        FeedBeginRequest,
        FeedFinishRequest,
        FeedStageRequest,
        FeedStageResult,
        FeedSyncInput,
        FeedSyncSummary,
        PlanRunsRequest,
    )
    from workflows.ids import broadcast_workflow_id

SHORT = timedelta(minutes=1)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
FILE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=2), maximum_attempts=5,
    non_retryable_error_types=["NotFound", "NoSource"],
)  # fmt: skip
# The stage request carries `refetch` (a sync-now asked to skip the conditional GET of a URL feed).
REFETCH_PATCH = "feed-refetch"


@workflow.defn
class FeedSyncWorkflow:
    @workflow.run
    async def run(self, inp: FeedSyncInput) -> FeedSyncSummary:
        sync_id = "fsync_" + workflow.uuid4().hex[:16]
        now = workflow.now()
        begun = await workflow.execute_activity_method(
            FeedActivities.begin,
            FeedBeginRequest(sync_id=sync_id, feed_id=inp.feed_id, object_key=inp.object_key, as_of=now),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
        )
        # Another sync of the feed is running (its schedule fired during a sync the API started, or the
        # other way round): this one ends here, having read nothing; its row says so. No new command, and
        # histories from before `begin` answered replay None: no patch needed.
        if begun is not None and begun.skipped is not None:
            return FeedSyncSummary(sync_id=sync_id, state="skipped", error=begun.skipped)
        refetch = workflow.patched(REFETCH_PATCH) and inp.refetch
        try:
            staged = await workflow.execute_activity_method(
                FeedActivities.stage,
                FeedStageRequest(
                    sync_id=sync_id, feed_id=inp.feed_id, max_rejected_rows=inp.max_rejected_rows, refetch=refetch
                ),
                start_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=FILE_RETRY,
                summary="stream the feed into staging",
            )
        except ActivityError as err:
            message = getattr(err.cause, "message", None) or str(err.cause or err)
            staged = FeedStageResult(state="failed", error=f"sync gave up: {message}"[:500])
        finish = FeedFinishRequest(sync_id=sync_id, result=staged, as_of=workflow.now(), force=inp.force)
        if staged.state != "staged":  # unchanged (a 304) ends here too: nothing staged, nothing to apply
            await workflow.execute_activity_method(
                FeedActivities.fail, finish, start_to_close_timeout=SHORT, retry_policy=RETRY
            )
            return FeedSyncSummary(sync_id=sync_id, state=staged.state)
        applied = await workflow.execute_activity_method(
            FeedActivities.apply,
            finish,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RETRY,
            summary="apply the feed (one transaction)",
        )
        if applied.state != "succeeded":  # refused: a full file that would remove too much
            return FeedSyncSummary(
                sync_id=sync_id, state=applied.state, removed=applied.removed, duplicates=staged.duplicates
            )
        planned = await workflow.execute_activity_method(
            BroadcastActivities.plan_feed_runs,
            PlanRunsRequest(section_id=inp.section_id, sync_id=sync_id, as_of=workflow.now(), shards=inp.shards),
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RETRY,
            summary="plan triggered campaign runs",
        )
        for run in planned:
            await workflow.start_child_workflow(
                BroadcastWorkflow.run,
                BroadcastInput(
                    run_id=run.run_id,
                    section_id=inp.section_id,
                    campaign_id=run.campaign_id,
                    send_at=run.send_at,
                    shards=inp.shards,
                ),
                id=broadcast_workflow_id(run.run_id),
                parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=f"campaign {run.campaign_id}: run {run.run_id}",
            )
        return FeedSyncSummary(
            sync_id=sync_id, state="succeeded", changes=applied.changes, removed=applied.removed,
            runs=[r.run_id for r in planned], duplicates=staged.duplicates,
        )
