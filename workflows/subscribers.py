"""SubscriberSyncWorkflow: sync every new upload folder of one integration's list, in order.

Started by the integration's Temporal Schedule (every few minutes) and by "Sync now", which
triggers that same schedule, so two runs never overlap. Per folder: claim -> stream and stage
(heartbeating, resumable) -> finish (atomic switch, or failure recorded with the old set kept).
A file that would remove most of the list is refused (the old set kept) unless its folder was forced
(`POST .../subscribers/sync?force=true` marks refused folders `forced`; the claim says so).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.subscribers import SubscriberActivities
    from workflows.subscriber_models import (
        ClaimRequest,
        CleanupRequest,
        FinishSyncRequest,
        ListFoldersRequest,
        SyncFolderRequest,
        SyncFolderResult,
        SyncInput,
        SyncSummary,
    )

SHORT = timedelta(minutes=1)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
# A 10M-row file takes minutes; each attempt resumes from its heartbeat, so a few attempts suffice.
FILE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=2), maximum_attempts=5,
    non_retryable_error_types=["NotProvisioned"],
)  # fmt: skip


@workflow.defn
class SubscriberSyncWorkflow:
    def __init__(self) -> None:
        self.summary = SyncSummary()

    @workflow.query
    def progress(self) -> SyncSummary:
        return self.summary

    @workflow.run
    async def run(self, inp: SyncInput) -> SyncSummary:
        folders = await workflow.execute_activity_method(
            SubscriberActivities.list_folders,
            ListFoldersRequest(integration_id=inp.integration_id),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary="list upload folders",
        )
        for folder in folders:
            claim = await workflow.execute_activity_method(
                SubscriberActivities.claim,
                ClaimRequest(
                    section_id=inp.section_id,
                    integration_id=inp.integration_id,
                    folder=folder,
                    as_of=workflow.now(),
                ),
                start_to_close_timeout=SHORT,
                retry_policy=RETRY,
                summary=f"claim {folder}",
            )
            if claim.skip:
                continue
            workflow.set_current_details(f"syncing {folder}")
            try:
                result = await workflow.execute_activity_method(
                    SubscriberActivities.sync_folder,
                    SyncFolderRequest(
                        sync_id=claim.sync_id,
                        integration_id=inp.integration_id,
                        folder=folder,
                        generation=claim.generation,
                        max_rejected_rows=inp.max_rejected_rows,
                        force=claim.force,
                    ),
                    start_to_close_timeout=timedelta(hours=2),
                    heartbeat_timeout=timedelta(minutes=2),
                    retry_policy=FILE_RETRY,
                    summary=f"stream {folder}/data.csv",
                )
            except ActivityError as err:
                message = getattr(err.cause, "message", None) or str(err.cause or err)
                result = SyncFolderResult(state="failed", error=f"sync gave up: {message}"[:500])
            await workflow.execute_activity_method(
                SubscriberActivities.finish,
                FinishSyncRequest(sync_id=claim.sync_id, result=result, as_of=workflow.now()),
                start_to_close_timeout=SHORT,
                retry_policy=RETRY,
                summary=f"finish {folder}: {result.state}",
            )
            self.summary.folders.append(folder)
            self.summary.states.append("succeeded" if result.state == "staged" else result.state)
        if folders:
            await workflow.execute_activity_method(
                SubscriberActivities.cleanup,
                CleanupRequest(integration_id=inp.integration_id),
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RETRY,
                summary="drop superseded list generations",
            )
        return self.summary
