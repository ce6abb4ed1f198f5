"""One journey step as one durable activity: decide (channel, caps, priority), then deliver.

Journeys started after patch `step-in-one-activity` run each step through `send_step` instead
of a local `journey.decide` followed by a durable `delivery.deliver`: one activity task and no
marker per step, which is what bounded journey throughput (docs/performance.md). Both halves
keep their own idempotency, so a retried attempt is safe wherever the previous one stopped:
the decision is looked up by its decision key (a retry returns what the first attempt
decided, the cap slot is never counted twice), the send by its send key (`accepted` is never
called again; `in_flight` is called again with the same key and flagged possible duplicate).
"""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.delivery import Delivery, Prepared
from activities.journey import JourneyActivities
from activities.step_reads import StepReads
from workflows.models import DeliverRequest, StepDecision, StepOutcome, StepRequest


class JourneySteps:
    def __init__(self, journey: JourneyActivities, delivery: Delivery) -> None:
        self.journey = journey
        self.delivery = delivery

    @activity.defn(name="journey.send_step")
    async def send_step(self, req: StepRequest) -> StepOutcome:
        """Decide the step and, if it sends, deliver it; the last step's send also ends the journey."""
        decision, begun = await asyncio.to_thread(self._decide_and_begin, req)
        if begun is None:  # skipped (caps, audience, no channel) or deferred (send window)
            return StepOutcome(decision=decision)
        result = await self.delivery.deliver_prepared(*begun)
        return StepOutcome(
            decision=decision, delivery=result, journey_ended=req.last_step and result.status == "accepted"
        )

    def _decide_and_begin(self, req: StepRequest) -> tuple[StepDecision, tuple[DeliverRequest, Prepared] | None]:
        """The decision and the send marked in flight in one transaction (one commit, one thread
        hop): the reservation and the in-flight send are written together or not at all."""
        reads = StepReads()
        with self.journey.store.session() as s:
            decision = self.journey.decide_in(s, req, reads)
            if decision.action != "send":
                return decision, None
            delivery = req.deliver_request(decision)
            return decision, (delivery, self.delivery.begin_in(s, delivery, rate_waited=False, reads=reads))
