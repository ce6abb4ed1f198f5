"""ScheduledCampaignWorkflow: one fire of a recurring scheduled campaign's Temporal Schedule.

The schedule (`campaign/<section>/<campaign>`, see `api/campaign_schedules.py`) starts this
workflow at every time of day and weekday of the campaign. It turns its *nominal* fire time
(the schedule's `TemporalScheduledStartTime`, identical for a duplicate or buffered fire of
the same slot) into a deterministic run id, creates that run if absent, and drives it as the
child `BroadcastWorkflow` `broadcast/<run>`. A second fire of the same slot finds the run (or
its workflow) already there and sends nothing; a retried batch never re-sends a finished
recipient. The workflow waits for its run, so the schedule's overlap policy (BUFFER_ONE)
keeps runs of one campaign from piling up.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.broadcast import BroadcastActivities
    from workflows.broadcast import BroadcastWorkflow
    from workflows.feed_models import BroadcastInput, FireRequest, RunProgress, ScheduledFireInput
    from workflows.ids import broadcast_workflow_id

SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


@workflow.defn
class ScheduledCampaignWorkflow:
    @workflow.run
    async def run(self, inp: ScheduledFireInput) -> RunProgress | None:
        fire = inp.fire_time or workflow.info().typed_search_attributes.get(SCHEDULED_START)
        if fire is None:  # started by hand without a time: this instant is the slot
            fire = workflow.info().start_time
        planned = await workflow.execute_activity_method(
            BroadcastActivities.plan_scheduled_fire,
            FireRequest(section_id=inp.section_id, campaign_id=inp.campaign_id, fire_time=fire, as_of=workflow.now()),
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=RETRY,
            summary="create this fire's run",
        )
        if planned is None:
            workflow.set_current_details("campaign not active: nothing sent")
            return None
        try:
            child = await workflow.start_child_workflow(
                BroadcastWorkflow.run,
                BroadcastInput(
                    run_id=planned.run_id,
                    section_id=inp.section_id,
                    campaign_id=inp.campaign_id,
                    shards=inp.shards,
                    plan_scheduled=True,
                ),  # fmt: skip
                id=broadcast_workflow_id(planned.run_id),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                static_summary=f"scheduled campaign {inp.campaign_id}: run {planned.run_id}",
            )
        except WorkflowAlreadyStartedError:
            # A duplicate fire of this slot: the run is (or was) driven by the first one.
            workflow.set_current_details(f"run {planned.run_id} already started by an earlier fire")
            return None
        workflow.set_current_details(f"run {planned.run_id}")
        return await child
