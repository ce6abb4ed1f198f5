"""Batched campaign runs: plan recipients, then deliver them in idempotent batches.

`plan` turns a feed sync (price drops, attribute changes) or a scheduled campaign into runs
with recipient rows. `deliver_batch` takes the next due recipients of one shard and, for each:
audience and send-window check (recipient's timezone), channel and cap reservation, render,
provider call with the idempotency key `bcast:<run>:<user>:<channel>`, and the recipient's
final status, committed per recipient. Up to `concurrency` recipients of a batch are delivered
at once (activities/fan_out.py). A batch retried after a crash skips everyone already finished
and repeats only the calls whose outcome was unknown (those in flight), under the same keys and
with the message their first attempt composed (activities/frozen_message.py). A send whose
outcome was unknown may have been delivered (`store.sends.maybe_delivered`), whatever the vendor
does with the key, until the vendor accepts a retry: ended otherwise, it keeps its cap slot and
its recipient falls back to no other channel, as a journey's step (activities/delivery.py). With
a vendor that does not honour the key, a second unknown outcome ends it so, not retried again
(`activities/provider_retry.py::unknown_again`). A send that fails is logged once, at WARNING. A push
recipient the provider reports gone is opted out and its send handed to the user's next live opt-in
on the channel (`_gone`), by the journeys' rule (activities/gone_recipient.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.broadcast_batch import Batch, Ready
from activities.broadcast_message import BatchMessages
from activities.broadcast_plain import Accepted, PlainPath
from activities.delivery import RECIPIENT_CHANGED
from activities.fan_out import FanOut, GroupCommit, SlotGrid, settled
from activities.frozen_message import FrozenMessage
from activities.gone_recipient import may_hand_over, may_try_next
from activities.provider_retry import (
    answer_of,
    log_failed,
    refused_replaced_credentials,
    unknown_again,
    unknown_twice,
)
from domain import schedule as sched
from domain.allocation import keep_or_allocate
from domain.campaign import CampaignSpec, CampaignType, Channel
from domain.caps import CapPolicy
from domain.channels import choose_channel
from domain.conditions import matches
from domain.identifiers import sendable_recipient
from domain.render import MissingRequired
from domain.tracking import Signer
from providers.base import ConfigurationError, ProviderError, kept_answer
from providers.ratelimit import JITTER_MARGIN
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from store import broadcasts, decisions, journey_rows, report_rollup, reservations, sends
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.campaigns import active_campaigns, load_spec
from store.engine import Store
from store.erasure import ERASED
from store.feed_tables import Feed, FeedSync
from store.locks import lock_key
from store.reachability import integrations_of, opt_out_gone, reach, reach_with
from store.report_rollup import PROVIDER_OPT_OUT
from store.statements import row_of, table_of
from store.tables import Campaign, Journey, Section, Send, now_utc
from store.users import canonical_user
from workflows.feed_models import (
    BatchRequest,
    BatchResult,
    BroadcastInput,
    FireRequest,
    PlannedRun,
    PlanRunsRequest,
)
from workflows.ids import (
    batched_journey_id,
    broadcast_send_key,
    broadcast_workflow_id,
    feed_run_id,
    scheduled_run_id,
)

log = logging.getLogger(__name__)

# A recipient whose provider answers 429/5xx (or no answer) is retried on its own, with backoff,
# so one address a vendor keeps refusing never holds up the rest of its shard; and given up,
# recorded failed and its cap slot returned, once its first attempt is this old (a journey's
# delivery budget, workflows.models.JourneyInput.delivery_budget).
RECIPIENT_RETRY_BUDGET = timedelta(hours=6)
RECIPIENT_FIRST_BACKOFF = timedelta(seconds=2)
RECIPIENT_MAX_BACKOFF = timedelta(minutes=10)
OPEN_SEND = ("in_flight", "retrying")  # a provider call was started and has no final status
# A recipient merged into another recipient of the same run (the person logged in during it).
MERGED_DURING_RUN = "merged into another recipient of this run"
# The other way round: a recipient whose person was already sent the run's message (or has a call
# of it open) under another recipient row merged into them since (a device sent while anonymous,
# then logged in): the merge re-points that row's journey and send to the person, not their ids.
MERGED_ALREADY_SENT = "merged: already sent to this person by another recipient of this run"
# A permanent failure on one channel: the recipient stays pending and is prepared again, on the
# next reachable channel of the priority (as a journey's step falls back), or ends failed.
FALLBACK = "fallback"
# A push recipient the provider reported gone, whose send goes to the user's next live opt-in on the
# same channel (`_gone`, activities/gone_recipient.py): the recipient stays pending and is prepared
# again at once, on that channel, for that opt-in, under the same send key.
HANDED_OVER = "handed_over"
# LOCK ORDER. The senders of a batch (and the shards of a run) commit concurrently, and their
# transactions share two kinds of hot rows: the run's row (`BroadcastRun` counters) and the
# campaign's report counters of sends (`report_rollup.count_send`). Every transaction here takes
# them in one order: the recipient's own rows (recipient, send, cap slot, journey) first, then the
# run row, then the send counters last, held until the commit. On PostgreSQL the reverse order in
# one path (a skipped recipient's open sends counted before the run row, while `_record_in` updates
# the run row first) deadlocked two senders. (The enrollment's `users` counter that `_prepare`
# may bump before a run row update is never taken after one.)
# Recipients of one batch delivered at once (REJOIN_BROADCAST_CONCURRENCY), each chunk prepared for
# the senders waiting: a shard's cycle is its chunk's transaction, the calls, the group's record, so
# more senders make bigger chunks and more calls per cycle. Against a 50 ms vendor (2 shards,
# PostgreSQL, idle machine): 32 senders 365-382 messages/s, 64: 421-476, 128: 514-521
# (docs/performance.md). Bounded: at most this many vendor connections per shard.
DEFAULT_CONCURRENCY = 64
# Recipients skipped per transaction when a run ends because its campaign was paused or archived
# (`_end_stopped`); other shards' recipients are skipped with them only when not due for this long
# (none of their batches takes them meanwhile; the nearer ones their own shard skips).
STOPPED_PAGE = 500
STOPPED_OTHERS_AFTER = timedelta(minutes=1)
# A batch heartbeats at least this often (`_heartbeat_while_running`); the workflow's heartbeat
# timeout for a batch is a few of these (workflows/broadcast.py BATCH_HEARTBEAT_TIMEOUT).
HEARTBEAT_EVERY = timedelta(seconds=5)

# Prepared once (docs/performance.md): per recipient, on the fan-out's hot path.
_SEND = table_of(Send)
_INSERT_SEND = insert(_SEND)
_RUN = table_of(BroadcastRun)
# A Core UPDATE of the table, not the ORM's of the entity, whose session synchronisation cost more
# than the statement (no run row is loaded in the sessions that count).
_COUNT_ON_RUN = {
    status: update(_RUN).where(_RUN.c.id == bindparam("run_id")).values({status: _RUN.c[status] + 1})
    for status in ("sent", "skipped", "failed")
}

FEED_TYPES = {
    "product": (CampaignType.PRICE_DROP, CampaignType.PRODUCT_ATTRIBUTE_CHANGE),
    "user": (CampaignType.USER_ATTRIBUTE_CHANGE,),
}


def send_time(spec: CampaignSpec, as_of: datetime) -> datetime:
    """When a run of this campaign sends: its schedule's next slot, or now without one."""
    if spec.schedule is None:
        return as_of
    if spec.schedule.send_at is not None:
        return max(spec.schedule.send_at, as_of)
    tz = sched.zone(spec.schedule.timezone)
    return sched.next_occurrence(
        as_of, sched.parse_hhmm(spec.schedule.time_of_day), list(spec.schedule.days), tz
    )


# `plan_audience`'s answer (negative: no count) for a run it ended without listing anyone, by the
# state it wrote: its slot is no longer on the campaign's schedule, or the campaign is not active.
ENDED_UNSENT = {"superseded": -1, "cancelled": -2}


def off_schedule(run: BroadcastRun, campaign: Campaign | None, spec: CampaignSpec) -> tuple[str, str] | None:
    """Why a scheduled run must not send when it wakes to plan, as (state, reason); None: it sends.

    A run is created for one slot of the campaign's schedule (`POST .../runs`, a Schedule fire),
    maybe long before that slot; an edit since may have moved or removed the slot, which then
    sends at its new time as another run: the old one sending too gave everyone the campaign twice.
    The slot is the run's `send_at` (a one-off `send_at` campaign: the instant the run is named
    after, as a past `send_at` sends at once); a fire at a time that is no slot (Temporal's
    "Trigger") is off schedule too. A run without `send_at` (none is created so) is not checked."""
    if campaign is None or campaign.status != "active":
        status = campaign.status if campaign is not None else "deleted"
        return "cancelled", f"campaign {status} before its send time"
    slot, schedule = run.send_at, spec.schedule
    if slot is None or spec.type != CampaignType.SCHEDULED:
        return None
    if schedule is None:
        return "superseded", "the campaign no longer has a schedule"
    if schedule.send_at is not None:
        if run.id == scheduled_run_id(campaign.id, schedule.send_at):
            return None
        return "superseded", f"the campaign now sends at {schedule.send_at.isoformat()}"
    tz = sched.zone(schedule.timezone)
    at = sched.parse_hhmm(schedule.time_of_day)
    local = slot.astimezone(tz)
    on_slot = (
        sched.next_occurrence(slot, at, list(schedule.days), tz) == slot
        # In a DST gap Temporal's reading of the local time may differ from `next_occurrence`'s.
        or (sched.DAYS[local.weekday()] in schedule.days and local.time() == at)
    )
    if not on_slot:
        return "superseded", (
            f"{slot.isoformat()} is not a slot of the campaign's schedule "
            f"({schedule.time_of_day} {','.join(schedule.days)} {schedule.timezone})"
        )
    if schedule.recurring and schedule.until is not None and slot > schedule.until:
        return "superseded", f"the campaign's schedule ends at {schedule.until.isoformat()}"
    return None


class BroadcastActivities:
    def __init__(
        self,
        store: Store,
        providers: ProviderRegistry,
        box: SecretBox,
        cap_policy: CapPolicy,
        priority_window: timedelta,
        *,
        signer: Signer | None = None,
        public_url: str = "",
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.store = store
        self.providers = providers
        self.box = box
        self.cap_policy = cap_policy
        self.priority_window = priority_window
        self.concurrency = max(1, concurrency)
        self.messages = BatchMessages(providers, box, signer, public_url)
        self.plain = PlainPath(self.messages, box, priority_window)

    # ------------------------------------------------------------ planning

    @activity.defn(name="broadcast.plan_feed_runs")
    def plan_feed_runs(self, req: PlanRunsRequest) -> list[PlannedRun]:
        """Runs triggered by one applied feed sync, one per matching active campaign."""
        assert req.sync_id is not None
        planned: list[PlannedRun] = []
        with self.store.session() as s:
            sync = s.get(FeedSync, req.sync_id)
            feed = s.get(Feed, sync.feed_id) if sync else None
            if sync is None or feed is None or sync.state != "succeeded":
                return []
            for campaign, spec in active_campaigns(s, req.section_id):
                if spec.type not in FEED_TYPES[feed.kind]:
                    continue
                run_id = feed_run_id(req.sync_id, campaign.id)
                existing = s.get(BroadcastRun, run_id)
                if existing is None:
                    if spec.type == CampaignType.PRICE_DROP:
                        who = broadcasts.price_drop_recipients(s, spec, req.section_id, sync.id)
                    elif spec.type == CampaignType.PRODUCT_ATTRIBUTE_CHANGE:
                        who = broadcasts.product_change_recipients(
                            s, spec, req.section_id, sync.id, req.as_of
                        )
                    else:
                        who = broadcasts.user_change_recipients(s, spec, sync.id)
                    if not who:
                        continue
                    existing = self._new_run(
                        s, campaign, spec, run_id, f"{feed.kind} feed sync", sync.id, req.as_of
                    )
                    existing.total = broadcasts.add_recipients(s, run_id, req.shards, who)
                    s.add(existing)
                planned.append(PlannedRun(run_id=run_id, campaign_id=campaign.id, send_at=existing.send_at))
        return planned

    def _new_run(
        self, s: Session, campaign: Campaign, spec: CampaignSpec, run_id: str, reason: str, source: str | None,
        as_of: datetime,
    ) -> BroadcastRun:  # fmt: skip
        run = BroadcastRun(
            id=run_id, section_id=campaign.section_id, campaign_id=campaign.id, campaign_version=campaign.version,
            reason=reason, source_id=source, state="waiting", send_at=send_time(spec, as_of), created_at=as_of,
        )  # fmt: skip
        s.add(run)
        return run

    @activity.defn(name="broadcast.plan_scheduled_fire")
    def plan_scheduled_fire(self, req: FireRequest) -> PlannedRun | None:
        """The run of one fire of a recurring campaign (insert-if-absent on its deterministic id).

        None when the campaign is no longer active (paused or archived between the fire and now:
        the schedule is paused or deleted with it, but a fire may already be on its way)."""
        run_id = scheduled_run_id(req.campaign_id, req.fire_time)
        with self.store.session() as s:
            existing = s.get(BroadcastRun, run_id)
            if existing is None:
                campaign = s.get(Campaign, req.campaign_id)
                if campaign is None or campaign.section_id != req.section_id or campaign.status != "active":
                    return None
                existing = BroadcastRun(
                    id=run_id, section_id=campaign.section_id, campaign_id=campaign.id,
                    campaign_version=campaign.version, reason=f"schedule {req.fire_time.isoformat()}",
                    state="waiting", send_at=req.fire_time, created_at=req.as_of,
                )  # fmt: skip
                s.add(existing)
            return PlannedRun(run_id=run_id, campaign_id=req.campaign_id, send_at=existing.send_at)

    @activity.defn(name="broadcast.plan_audience")
    def plan_audience(self, inp: BroadcastInput) -> int:
        """List every user of the campaign's audience as a recipient (scheduled campaigns).

        First the run's slot is checked against the campaign as it is now (`off_schedule`): a
        slot an edit moved or removed, or a campaign no longer active, ends the run unsent (a
        negative answer, `ENDED_UNSENT`). Otherwise the run sends the campaign's latest version,
        as a fire of the slot created now would: content edited after a hand start applies."""
        total = 0
        with self.store.session() as s:
            run = s.get(BroadcastRun, inp.run_id)
            assert run is not None
            if run.state in ENDED_UNSENT:
                return ENDED_UNSENT[run.state]  # a retry after the run was ended
            if run.total:
                return run.total  # a retry after the listing committed
            campaign = s.get(Campaign, run.campaign_id)
            if run.send_at is not None:
                spec = load_spec(s, run.campaign_id, campaign.version if campaign else run.campaign_version)
                refused = off_schedule(run, campaign, spec)
                if refused is not None:
                    run.state, run.finished_at = refused[0], now_utc()
                    run.reason = f"{run.reason}; not sent: {refused[1]}"[:200]
                    s.add(run)
                    return ENDED_UNSENT[run.state]
                if campaign is not None:
                    run.campaign_version = campaign.version
            spec = load_spec(s, run.campaign_id, run.campaign_version)
            for page in broadcasts.all_users(s, run.section_id):
                who: dict[str, list[dict[str, Any]]] = {
                    u.id: []
                    for u in page
                    if matches(spec.audience.conditions, u.attributes, spec.audience.match)
                }
                total += broadcasts.add_recipients(s, run.id, inp.shards, who)
                activity.heartbeat(total)
            run.total = total
            s.add(run)
        return total

    @activity.defn(name="broadcast.set_state")
    def set_state(self, run_id: str, state: str, as_of: datetime) -> None:
        with self.store.session() as s:
            run = s.get(BroadcastRun, run_id)
            if run is None or run.state in ENDED_UNSENT:
                return  # ended unsent by `plan_audience`: a workflow from before that check goes on
            run.state = state
            if state == "done":
                run.finished_at = as_of
            s.add(run)

    # ------------------------------------------------------------ delivery

    @activity.defn(name="broadcast.deliver_batch")
    async def deliver_batch(self, req: BatchRequest) -> BatchResult:
        batch, rate, due = await asyncio.to_thread(self._load_batch, req)
        result = BatchResult()
        beat = asyncio.create_task(_heartbeat_while_running(lambda: result.processed))
        try:
            # Paused or archived before this batch (a shard woken by the pause's signal, or by its
            # timer): the rest of the shard is skipped at once, nobody waits for a slot or a sender.
            if await asyncio.to_thread(self._end_stopped, req, batch, req.campaign_stopped, result):
                return await asyncio.to_thread(self._remaining, req, result)
            return await self._deliver_due(req, batch, rate, due, result)
        finally:
            beat.cancel()

    async def _deliver_due(
        self, req: BatchRequest, batch: Batch, rate: float | None, due: list[str], result: BatchResult
    ) -> BatchResult:
        # Throttle: at most `rate` provider calls per second from this shard, on its phase of the
        # run's grid, so the shards' calls interleave evenly.
        # A throttled shard prepares each recipient just before its slot (`FanOut.before_turn`): chunks
        # prepared ahead would wait for their slots in flight.
        fan: FanOut[Ready] = FanOut(
            due, SlotGrid(1.0 / rate, req.shard, req.shards) if rate else None,
            prepare_chunk=None if rate else partial(self._prepare_chunk, req, batch),
            withdraw_prepared=partial(self._withdrawn, req),
        )  # fmt: skip
        recorder: GroupCommit[Accepted, str] = GroupCommit(partial(self._record_accepted, req))

        async def deliver(user_id: str, prepared: Ready | None) -> None:
            outcome = await self._deliver_one(fan, recorder, req, batch, user_id, prepared)
            if outcome is None:
                return  # withdrawn before its call (the shard paused): still pending, not processed
            result.processed += 1
            setattr(result, outcome, getattr(result, outcome) + 1)
            activity.heartbeat(result.processed)

        senders = min(self.concurrency, len(due))
        if rate:
            # A throttled shard needs no more senders than calls it may start in 2 s (full rate for
            # answers up to ~2 s): more would only prepare recipients seconds before their slot.
            senders = min(senders, math.ceil(rate * 2) + 1)
        try:
            await fan.run(deliver, senders)
        finally:
            await recorder.closed()
        if fan.stopped:  # a sender saw the campaign paused or archived: the run ends (`_end_stopped`)
            await asyncio.to_thread(self._end_stopped, req, batch, fan.stopped_reason, result)
        result = await asyncio.to_thread(self._remaining, req, result)
        return _paused(result, fan.pause_until)

    async def _deliver_one(
        self,
        fan: FanOut[Ready],
        recorder: GroupCommit[Accepted, str],
        req: BatchRequest,
        batch: Batch,
        user_id: str,
        prepared: Ready | None,
    ) -> str | None:
        """One recipient, by one sender: its final outcome for the batch, None if withdrawn.
        `prepared`: by its chunk (activities/broadcast_plain.py); None: prepared here, alone."""
        prepare = partial(self._prepare, req, batch, user_id)
        slot: float | None = None
        outcome: Ready | str | None = prepared
        gone = 0  # recipients of this send the provider reported gone so far in this batch
        if outcome is None:
            slot = fan.reserve_turn()
            if not await fan.before_turn(slot):
                return None  # the shard paused before its turn: still pending, nothing prepared
            outcome = await settled(prepare, undo=partial(self._withdrawn, req))
        _stop_if_campaign_stopped(fan, outcome)
        while isinstance(outcome, Ready):
            ready = outcome
            outcome = await fan.call(
                partial(self._send, fan, recorder, req, user_id, ready, gone),
                partial(self._withdrawn, req, ready), slot,
            )  # fmt: skip
            if outcome == HANDED_OVER:
                gone += 1
            # A permanent failure: the next reachable channel, if any. A gone push recipient: the same
            # channel, prepared alone for the user's next opt-in (its call takes a turn of its own).
            if outcome in (FALLBACK, HANDED_OVER):
                # Not while the shard pauses: the recipient stays pending and goes on in a later batch.
                slot = fan.reserve_turn()
                if not await fan.before_turn(slot):
                    return None
                outcome = await settled(prepare, undo=partial(self._withdrawn, req))
                _stop_if_campaign_stopped(fan, outcome)
        return outcome

    async def _prepare_chunk(self, req: BatchRequest, batch: Batch, user_ids: list[str]) -> dict[str, Ready]:
        """The chunk's plain recipients prepared together (activities/broadcast_plain.py); the others,
        or all if that transaction fails, are prepared alone (`_prepare`)."""
        try:
            return await settled(partial(self._prepare_plain, req, batch, user_ids), undo=self._withdraw_all(req))
        except Exception:  # e.g. a deadlock PostgreSQL broke: nothing was written, each goes alone
            log.warning("run %s shard %s: chunk of %d prepared one by one", req.run_id, req.shard, len(user_ids),
                        exc_info=True)  # fmt: skip
            return {}

    def _withdraw_all(self, req: BatchRequest) -> Callable[[dict[str, Ready]], Awaitable[None]]:
        async def undo(prepared: dict[str, Ready]) -> None:
            for ready in prepared.values():
                await self._withdrawn(req, ready)

        return undo

    def _prepare_plain(self, req: BatchRequest, batch: Batch, user_ids: list[str]) -> dict[str, Ready]:
        with self.store.session() as s:
            return self.plain.prepare(s, req, batch, user_ids)

    def _record_accepted(self, req: BatchRequest, accepted: list[Accepted]) -> list[str]:
        """A group of accepted calls recorded together where they are plain, each other one alone."""
        try:
            with self.store.session() as s:
                together = self.plain.record_accepted(s, req, accepted)
        except Exception:  # nothing was written: each is recorded alone
            log.warning("run %s shard %s: %d acceptances recorded one by one", req.run_id, req.shard, len(accepted),
                        exc_info=True)  # fmt: skip
            together = set()
        return [
            "sent" if a.user_id in together
            else self._record(req, a.user_id, a.ready, "sent", a.detail, a.provider_status)
            for a in accepted
        ]  # fmt: skip

    async def _withdrawn(self, req: BatchRequest, prepared: Ready | str) -> None:
        if isinstance(prepared, Ready):
            await settled(partial(self._withdraw, req, prepared))

    def _withdraw(self, req: BatchRequest, ready: Ready) -> None:
        """A prepared recipient whose call will not be made (the shard paused, or the activity was
        cancelled, before its turn): its send row is put back as it was, so a later attempt counts
        no call that was never made nor flags it a possible duplicate. The recipient stays pending."""
        with self.store.session() as s:
            send = s.get(Send, ready.send_key)
            if send is None or send.status != "in_flight" or send.attempts != ready.attempt:
                return  # not this preparation's row any more
            if ready.before is None:
                s.delete(send)
                reservations.release(s, ready.send_key)  # its cap slot: `_prepare` reserves it again
                return
            # Its kept message too: one this preparation composed for a call never made fixes nothing.
            send.status, send.possible_duplicate, send.message_enc = ready.before
            send.attempts, send.updated_at = ready.attempt - 1, now_utc()
            s.add(send)

    def _load_batch(self, req: BatchRequest) -> tuple[Batch, float | None, list[str]]:
        with self.store.session() as s:
            run = s.get(BroadcastRun, req.run_id)
            if run is None:
                raise ApplicationError("run missing", type="NotFound", non_retryable=True)
            spec = load_spec(s, run.campaign_id, run.campaign_version)
            rows = s.exec(
                select(BroadcastRecipient.user_id)
                .where(
                    BroadcastRecipient.run_id == req.run_id,
                    BroadcastRecipient.status == "pending",
                    BroadcastRecipient.shard == req.shard,
                    (col(BroadcastRecipient.not_before).is_(None))
                    | (col(BroadcastRecipient.not_before) <= req.as_of),
                )
                .order_by(col(BroadcastRecipient.user_id))
                .limit(req.limit)
            ).all()
            channels = [c.value for c in spec.channel_priority]
            channels += [c.value for v in spec.variations for step in v.steps for c in step.messages]
            integrations = integrations_of(s, run.section_id, channels)
            rate = spec.throttle_per_second
            for channel in spec.channel_priority:
                integ = integrations.get(channel.value)
                limit = (integ.config or {}).get("rate_limit_per_second") if integ else None
                if isinstance(limit, int | float) and limit > 0:
                    # A vendor's limit counts arrivals: the grid keeps the limiter's jitter margin
                    # (providers/ratelimit.py), which no limiter adds when shards run on different
                    # workers (each worker's limiter sees its shard's calls only).
                    vendor = float(limit) / (1.0 + JITTER_MARGIN)
                    rate = min(rate or vendor, vendor)
            section = s.get(Section, run.section_id)
            policy = self.cap_policy
            if section is not None and section.global_cap_messages:
                policy = CapPolicy(section.global_cap_messages, policy.window)
            batch = Batch(
                spec=spec, run_id=run.id, section_id=run.section_id, campaign_id=run.campaign_id,
                campaign_version=run.campaign_version, cap_policy=policy, integrations=integrations, secrets={},
            )  # fmt: skip
            # Shards run in parallel: each gets its share of the run's rate.
            return batch, (rate / max(1, req.shards)) if rate else None, list(rows)

    def _end_stopped(self, req: BatchRequest, batch: Batch, seen: str | None, result: BatchResult) -> bool:
        """End the run for this shard if its campaign is paused or archived (or a sender of the batch saw
        it so: `seen`, the reason): every pending recipient of the shard is skipped at once, whether due
        or waiting (a retry's backoff, a send window), with the others' recipients not due soon
        (`STOPPED_OTHERS_AFTER`). Skipped one by one, a throttled run went on skipping at its rate
        (3000 recipients at 5/s: 10 minutes) and sent again once the campaign was activated meanwhile;
        the docs say the run ends and does not resume on activate. False: the campaign is active."""
        with self.store.session() as s:
            status = journey_rows.campaign_status(s, batch.campaign_id)
        if seen is None and (status is None or status == "active"):
            return False
        # Activated again since a sender saw the pause: the run ends all the same (the pause said so).
        reason = f"campaign_{status}" if status is not None and status != "active" else seen or "campaign_paused"
        others_after = max(req.as_of, now_utc()) + STOPPED_OTHERS_AFTER
        while True:
            with self.store.session() as s:
                rows = s.exec(
                    select(BroadcastRecipient)
                    .where(
                        BroadcastRecipient.run_id == req.run_id,
                        BroadcastRecipient.status == "pending",
                        (col(BroadcastRecipient.shard) == req.shard)
                        | (col(BroadcastRecipient.not_before) > others_after),
                    )
                    .order_by(col(BroadcastRecipient.user_id))
                    .limit(STOPPED_PAGE)
                    .with_for_update()
                ).all()
                for rec in rows:
                    self._finish(s, rec, "skipped", reason)
            result.processed += len(rows)
            result.skipped += len(rows)
            if len(rows) < STOPPED_PAGE:
                return True

    def _remaining(self, req: BatchRequest, result: BatchResult) -> BatchResult:
        """Fill in what is left for this shard and the run's totals so far."""
        with self.store.session() as s:
            base = (
                BroadcastRecipient.run_id == req.run_id,
                BroadcastRecipient.status == "pending",
                BroadcastRecipient.shard == req.shard,
            )
            due = s.exec(
                select(func.count()).where(
                    *base,
                    (col(BroadcastRecipient.not_before).is_(None))
                    | (col(BroadcastRecipient.not_before) <= req.as_of),
                )
            ).one()
            result.more_due = due > 0
            result.next_due = s.exec(select(func.min(BroadcastRecipient.not_before)).where(*base)).one()
            run = s.get(BroadcastRun, req.run_id)
            if run is not None:
                result.run_sent, result.run_skipped, result.run_failed = run.sent, run.skipped, run.failed
            return result

    def _finish_failed(self, s: Session, rec: BroadcastRecipient, failed: dict[str, str], more: str = "") -> str:
        """A recipient whose fallback found no channel to send on ends failed, on its last failed
        channel with that channel's answer (and `more`: why the next one could not be used)."""
        last = list(failed)[-1]
        return self._finish(s, rec, "failed", f"{last}: {failed[last]}{more}"[:200], last)

    def _finish(
        self, s: Session, rec: BroadcastRecipient, status: str, reason: str | None, channel: str | None = None
    ) -> str:
        """Move a pending recipient to its final status and count it on the run, once."""
        # A send the recipient began that no final answer ended is over with the recipient (such a
        # send on a channel given up for the next: `_prepare`). A recipient sent at once has none:
        # only a retry (`_defer_retry` sets `not_before`) leaves one `retrying`; no read for them.
        closed: list[tuple[Send, str]] = []
        if status != "sent" or rec.not_before is not None:
            why = f"sent on {channel} instead" if status == "sent" else reason
            closed = _close_open_sends(s, batched_journey_id(rec.run_id, rec.user_id), why)
        rec.status, rec.reason, rec.channel = status, reason, channel
        s.add(rec)
        # Shards (and the senders of a batch) finish recipients concurrently: increment in SQL,
        # never read-modify-write.
        s.execute(_COUNT_ON_RUN[status], {"run_id": rec.run_id})
        for send, previous in closed:  # after the run row (LOCK ORDER)
            report_rollup.count_send(s, send, previous)
        return status

    def _prepare(self, req: BatchRequest, batch: Batch, user_id: str) -> Ready | str:
        """Everything before the provider call, in one transaction; a string is a final outcome."""
        spec = batch.spec
        with self.store.session() as s:
            rec = _recipient_row(s, req.run_id, user_id)
            if rec is None or rec.status != "pending":
                return "skipped" if rec is None or rec.status == "skipped" else rec.status
            status = journey_rows.campaign_status(s, batch.campaign_id)
            if status is not None and status != "active":
                # Paused or archived while the run sends: the rest of it is skipped, as a journey's
                # steps that come due then are (docs/campaigns.md), at once (`_end_stopped`).
                return CampaignStopped(self._finish(s, rec, "skipped", f"campaign_{status}"), f"campaign_{status}")
            user = canonical_user(s, user_id)
            if user is None:
                return self._finish(s, rec, "skipped", "user deleted")
            if user.erased_at is not None:
                # Erased since the run listed them: skipped before the enrollment below, so the
                # campaign report has no cohort for a person who no longer exists.
                return self._finish(s, rec, "skipped", ERASED)
            if user.id != user_id and _recipient_row(s, req.run_id, user.id) is not None:
                # Merged into another recipient of this run since it was listed (a login during the run):
                # that row sends the person the run's message; this one would send it again.
                return self._finish(s, rec, "skipped", MERGED_DURING_RUN)
            journey_id = batched_journey_id(batch.run_id, user.id)
            if _sent_under_merged_ids(s, batch, user.id, journey_id):
                # The other way round: a row merged into this person since the run listed it was sent
                # the message before the merge (an anonymous device, then a login). Its send, re-pointed
                # to the person, keeps its key and journey id: this row would send it again.
                return self._finish(s, rec, "skipped", MERGED_ALREADY_SENT)
            # The person's cap lock before their journey row (LOCK ORDER, as the chunks take them).
            lock_key(s, reservations.cap_lock_key(batch.section_id, user.id))
            if not matches(spec.audience.conditions, user.attributes, spec.audience.match):
                return self._finish(s, rec, "skipped", "audience")
            # The person keeps the variation of their first journey in the campaign (an earlier run's
            # or a trigger's) while the spec has it: an edit of the shares moves nobody between arms.
            first = journey_rows.first_variation(s, batch.section_id, batch.campaign_id, user.id)
            variation = keep_or_allocate(batch.campaign_id, user.id, spec.variations, first)
            # The allocation is a journey row, like a triggered journey's: the campaign report
            # counts the recipient (cohort and variation, holdout included) and later sends of
            # other campaigns see this one's priority. A retried or deferred recipient keeps
            # the row (and the time) of its first allocation.
            journey_rows.enroll(
                s,
                journey_rows.new_journey(
                    journey_id=journey_id, workflow_id=broadcast_workflow_id(batch.run_id), section_id=batch.section_id,
                    campaign_id=batch.campaign_id, campaign_version=batch.campaign_version, priority=spec.priority,
                    user_id=user.id, variation=variation, is_test=user.is_test, at=req.as_of, batched=True,
                ),
            )  # fmt: skip
            if variation.control:
                return self._finish(s, rec, "skipped", "holdout")
            window = spec.send_window
            if window is not None:
                start, end, tz = sched.recipient_window(window, user.attributes, user.locale)
                if not sched.in_window(req.as_of, start, end, tz):
                    if window.outside == "drop":
                        return self._finish(s, rec, "skipped", "quiet_hours")
                    rec.not_before = sched.window_opens(req.as_of, start, end, tz)
                    rec.reason = f"{broadcasts.WINDOW_REASON} ({tz.key})"
                    s.add(rec)
                    return "deferred"
            step = variation.steps[0]
            step_channels = [c.value for c in step.messages]
            r = reach_with(s, batch.section_id, user.id, step_channels, batch.integrations)
            failed = _failed_channels(s, journey_id) if rec.provider_response is not None else {}
            choice = choose_channel([c.value for c in spec.channel_priority], step_channels, r.unreachable, failed)
            # Only when another channel is chosen: with none left the recipient is skipped (or failed)
            # below, and `_finish` closes its open sends, flagged if they may have been delivered.
            elsewhere = (
                _open_sends_elsewhere(s, batch.run_id, user.id, step_channels, choice.channel)
                if choice.channel is not None
                else []
            )
            if any(sends.maybe_delivered(send) for send in elsewhere):
                # An attempt on a channel not chosen now (its opt-in withdrawn since) has no final
                # answer and may have been delivered: the recipient ends there, as a journey's step
                # falls back to no other channel. (Other open sends are closed by `_finish`.)
                last = elsewhere[-1].channel
                return self._finish(s, rec, "failed", f"{last}: {sends.MAYBE_DELIVERED}", last)
            if choice.channel is None:
                if failed:  # no channel left after a permanent failure: the recipient failed
                    return self._finish_failed(s, rec, failed)
                return self._finish(s, rec, "skipped", choice.reason)
            channel = str(choice.channel)
            # The recipient's row says which channel failed before the one it is sent on.
            fell_back = f"after {', '.join(f'{c}: {why}' for c, why in failed.items())}"[:200] if failed else None
            key = broadcast_send_key(batch.run_id, user.id, channel)
            prior = _send_row(s, key)
            if prior is not None and prior.status == "accepted":
                return self._finish(s, rec, "sent", fell_back, channel)
            cap = spec.settings.frequency_caps.get(Channel(channel))
            verdict = reservations.reserve(
                s,
                reservations.SlotRequest(
                    key=key, section_id=batch.section_id, user_id=user.id, channel=channel,
                    campaign_id=batch.campaign_id, priority=spec.priority, as_of=req.as_of,
                    campaign_limit=cap.max_messages if cap else None,
                    campaign_period=cap.period if cap else timedelta(days=1),
                ),
                batch.cap_policy,
                self.priority_window,
            )  # fmt: skip
            if not verdict.granted:
                if failed:  # the fallback channel is capped or outranked: the failure stands
                    return self._finish_failed(s, rec, failed, f"; {channel}: {verdict.explained}")
                return self._finish(s, rec, "skipped", verdict.explained, channel)
            integration = r.integrations[channel]
            recipient = sendable_recipient(channel, self.box.decrypt(r.opt_ins[channel].value_enc))
            if prior is not None and prior.status in OPEN_SEND and prior.message_enc is not None:
                # A retry: the content was fixed by the first attempt (activities/frozen_message.py),
                # sent again as it was, to the address it was made for, or not at all.
                frozen = FrozenMessage.open(self.box, prior.message_enc)
                if frozen.recipient != recipient:
                    return self._recipient_changed(s, rec, prior, channel)
            else:
                try:
                    frozen = self.messages.compose(
                        s, batch, as_of=req.as_of, key=key, user=user, variation=variation, channel=channel,
                        recipient=recipient, items=list(rec.items), integration=integration,
                    )  # fmt: skip
                except MissingRequired as err:
                    reservations.release(s, key)
                    return self._finish(s, rec, "skipped", str(err)[:200], channel)
            before = (prior.status, prior.possible_duplicate, prior.message_enc) if prior is not None else None
            if prior is None:
                # The message is kept for the retries of this send, in the INSERT that marks it in flight.
                send = self.messages.new_send(
                    batch, frozen, key=key, journey_id=journey_id, variation_id=variation.id, channel=channel,
                    integration_id=integration.id, user_id=user.id, as_of=req.as_of,
                )  # fmt: skip
                # A Core INSERT, now (the last statement but the commit, as the session's flush was):
                # the flush of one new object cost more CPU than the statement itself.
                s.execute(_INSERT_SEND, row_of(send))
            else:
                send = prior
                if prior.status == sends.UNKNOWN:
                    # The previous attempt died with its outcome unknown. Also for a vendor that honours
                    # the key: only its acceptance of this attempt settles whether it processed that one.
                    send.possible_duplicate = True
                if send.message_enc is None:
                    # Kept for the retries of this send, in the UPDATE that marks it in flight.
                    send.message_enc = frozen.seal(self.box)
                send.status, send.attempts, send.updated_at = "in_flight", send.attempts + 1, now_utc()
                s.add(send)
            return self.messages.ready(
                batch, frozen, integration, channel=channel, key=key, journey_id=journey_id,
                opt_in_id=r.opt_ins[channel].id, fell_back=fell_back, attempt=send.attempts, before=before,
            )  # fmt: skip

    def _recipient_changed(self, s: Session, rec: BroadcastRecipient, send: Send, channel: str) -> str:
        """A retry refused because the recipient's address changed since the first attempt fixed the
        content: the send and the recipient fail, with no fallback (as a journey's, RECIPIENT_CHANGED).
        An earlier attempt may have been delivered (`sends.maybe_delivered`): then it keeps its cap
        slot and is flagged, as a give-up is."""
        previous, reason = _close_send(s, send, RECIPIENT_CHANGED)
        self._finish(s, rec, "failed", reason[:200], channel)
        report_rollup.count_send(s, send, previous)  # last: see LOCK ORDER
        return "failed"

    async def _send(
        self, fan: FanOut[Ready], recorder: GroupCommit[Accepted, str], req: BatchRequest, user_id: str, ready: Ready,
        gone: int = 0,
    ) -> str:  # fmt: skip
        """The provider call and its outcome recorded; a vendor's Retry-After pauses the shard.
        `gone`: the recipients of this send reported gone before in this batch (`_gone`)."""
        try:
            # Through the registry: its per-integration limit holds across runs sharing the worker.
            response = await self.providers.send(ready.kind, ready.message)
        except ProviderError as err:
            if err.retryable:
                # At once, before the record: no other sender starts a call into the vendor's pause.
                fan.pause(_vendor_pause(err, req.as_of))
                # Only this recipient waits (its own backoff, `not_before`); the batch goes on with
                # the others. Failing the activity instead made Temporal retry the whole batch with
                # its own growing backoff: one fault in a few hundred stalled the shard for minutes.
                outcome = await settled(partial(self._defer_retry, req, user_id, ready, err))
                log.info(
                    "run %s shard %s, user %s: provider failed (%s); %s", req.run_id, req.shard, user_id,
                    err.status or "no answer", "retried on its own" if outcome == "deferred" else "given up",
                )  # fmt: skip
                return outcome
            if ready.config_as_of is not None and await asyncio.to_thread(
                refused_replaced_credentials, self.store, err, ready.message.integration_id, ready.config_as_of
            ):
                # A key rotated while the call was under way: this recipient waits its own backoff and a
                # later batch, reading the integration again, sends it with the new key. No shard pause:
                # the vendor is not overloaded, and the rest of the batch meets the same check.
                outcome = await settled(partial(self._defer_retry, req, user_id, ready, err))
                log.info(
                    "run %s shard %s, user %s: provider refused credentials replaced since the batch read them "
                    "(%s); %s", req.run_id, req.shard, user_id, err.status,
                    "retried with the new ones" if outcome == "deferred" else "given up",
                )  # fmt: skip
                return outcome
            if err.recipient_gone and ready.opt_in_id is not None:
                # Opted out and, within the journeys' bounds, handed to the user's next live opt-in on
                # the channel (HANDED_OVER), else failed as below (activities/gone_recipient.py).
                return await settled(partial(self._gone, req, user_id, ready, err, may_try_next(gone + 1)))
            refused = (req, user_id, ready, "failed", err.message, err.status, answer_of(err))
            return await settled(partial(self._record, *refused))
        except ConfigurationError as err:
            why = f"configuration: {err}"
            return await settled(partial(self._record, req, user_id, ready, "failed", why, None, "configuration"))
        # Recorded with the other senders' acceptances (`_record_accepted`).
        return await recorder.submit(Accepted(user_id, ready, kept_answer(response.body), response.status))

    def _defer_retry(self, req: BatchRequest, user_id: str, ready: Ready, err: ProviderError) -> str:
        """A retryable answer for one recipient (or a refusal of credentials rotated mid-call): record
        it and let the recipient wait its backoff ("deferred"), or give up once its retries have run out
        of budget ("failed")."""
        with self.store.session() as s:
            send = s.get(Send, ready.send_key)
            rec = s.get(BroadcastRecipient, (req.run_id, user_id))
            # An earlier attempt's outcome was unknown (flagged by its `_defer_retry`, or by `_prepare`
            # finding the send left in flight by a batch whose worker died mid-call).
            flagged = send is not None and send.possible_duplicate
            if send is not None and err.outcome_unknown:
                # Flagged now, not only by the retry (`_prepare`): the recipient may be skipped or
                # given up before any retry, and the message may have gone out all the same. Also
                # when the vendor honours the key: its later refusals (5xx) do not say whether it
                # processed this attempt; only its acceptance of a retry settles that (`_record_in`).
                send.possible_duplicate = True
            if unknown_again(err, ready.provider, flagged):
                # A vendor that does not de-duplicate may have delivered it at each of them: no third call,
                # and no other channel (`_record_in`: possibly delivered), as a journey's send.
                reason = unknown_twice(err, ready.kind)
                return self._record_in(s, req, user_id, ready, "failed", reason, err.status, answer=answer_of(err))
            if send is not None and rec is not None and req.as_of - send.created_at < RECIPIENT_RETRY_BUDGET:
                # A definite answer (429, 5xx, 401/403) is no possible duplicate; an unknown outcome stays in flight.
                send.status = "in_flight" if err.outcome_unknown else "retrying"
                send.provider_status, send.provider_response = err.status, err.message[:2000]
                send.updated_at = now_utc()
                s.add(send)
                backoff = RECIPIENT_FIRST_BACKOFF * 2 ** max(0, send.attempts - 1)
                delay = max(timedelta(seconds=err.retry_after or 0), min(backoff, RECIPIENT_MAX_BACKOFF))
                rec.not_before = max(req.as_of, now_utc()) + delay
                rec.reason = f"{broadcasts.RETRY_REASON} {err.status or 'no answer'} (attempt {send.attempts})"
                s.add(rec)
                return "deferred"
            attempts = send.attempts if send is not None else 1
            reason = f"gave up after {attempts} attempts: {err.message}"
            return self._record_in(s, req, user_id, ready, "failed", reason, err.status, answer=answer_of(err))

    def _record(
        self,
        req: BatchRequest,
        user_id: str,
        ready: Ready,
        status: str,
        detail: str,
        provider_status: int | None,
        answer: str | None = None,
    ) -> str:
        with self.store.session() as s:
            return self._record_in(s, req, user_id, ready, status, detail, provider_status, answer=answer)

    def _gone(self, req: BatchRequest, user_id: str, ready: Ready, err: ProviderError, next_one: bool) -> str:
        """The provider says the recipient is gone for good: its opt-in is opted out and, when the rule
        allows (`next_one`, `may_hand_over`: activities/gone_recipient.py, as a journey's send) and the
        user has another live opt-in on the channel, the send is handed to it (HANDED_OVER). It waits
        for that call as a send retried after a definite answer ("retrying": nothing was delivered, so
        its next attempt is no possible duplicate), without its kept message, which `_prepare` composes
        again for the user's newest live opt-in, under the same key (its cap slot kept). The recipient
        stays pending, with a `not_before` (due now) as a retried one has: `_finish` closes a send left
        open should it end on another channel, and its acceptance is recorded alone (`_record_in`),
        counted once, sent. Else the failure as before, counted as a provider opt-out."""
        assert ready.opt_in_id is not None
        channel = ready.message.channel
        with self.store.session() as s:
            opted_out = opt_out_gone(s, ready.opt_in_id)
            send = _send_row(s, ready.send_key)
            rec = _recipient_row(s, req.run_id, user_id)
            pending = rec is not None and rec.status == "pending"
            if next_one and pending and may_hand_over(channel, ready.provider, send):
                assert send is not None and rec is not None
                following = reach(s, send.section_id, send.user_id, [channel]).opt_ins.get(channel)
                if following is not None and following.id != ready.opt_in_id:
                    send.status, send.message_enc, send.updated_at = "retrying", None, now_utc()
                    send.provider_status, send.provider_response = err.status, err.message[:2000]
                    s.add(send)
                    rec.not_before = req.as_of
                    rec.reason = f"{broadcasts.RETRY_REASON} {err.status or 'no answer'}: recipient gone"[:200]
                    s.add(rec)
                    log.info("run %s, user %s: %s recipient gone, sending to the user's next opt-in",
                             req.run_id, user_id, channel)  # fmt: skip
                    return HANDED_OVER
            return self._record_in(s, req, user_id, ready, "failed", err.message, err.status, opted_out=opted_out)

    def _record_in(
        self,
        s: Session,
        req: BatchRequest,
        user_id: str,
        ready: Ready,
        status: str,
        detail: str,
        provider_status: int | None,
        opted_out: bool = False,
        answer: str | None = None,
    ) -> str:
        """The send's final status and its recipient's (or FALLBACK), in the caller's transaction.
        `opted_out`: the provider reported the recipient gone and `_gone` opted it out. `answer`: how
        a failure's log line names the provider's answer (default: `provider_status`, if any)."""
        send = _send_row(s, ready.send_key)
        # An attempt of this send may have been delivered (an outcome was unknown): a refusal now does
        # not say it was not. It keeps its cap slot and no other channel is tried (the user would get
        # both). This attempt marked the send in flight itself: only the flag tells of an earlier one.
        maybe_delivered = status == "failed" and sends.maybe_delivered(send, attempt_running=True)
        if maybe_delivered:
            detail = f"{detail} ({sends.MAYBE_DELIVERED})"
        previous: str | None = None
        if send is not None:
            previous, send.status = send.status, "accepted" if status == "sent" else "failed"
            send.message_enc = None  # final: no retry needs the content (and its personal data) any more
            if status == "sent" and ready.provider.honours_idempotency_key:
                # The vendor de-duplicates on the key: it delivered once, whatever earlier attempts
                # did (store/sends.py `accept(settled=True)`, as journeys).
                send.possible_duplicate = False
            send.provider_status = provider_status
            send.provider_response = detail[:2000]
            send.updated_at = now_utc()
            s.add(send)
        if status == "failed":
            if not maybe_delivered:
                reservations.release(s, ready.send_key)
            if previous != "failed":  # once, when it commits (a retried batch finds it recorded)
                log_failed(s, ready.send_key, detail, status=provider_status, answer=answer)
        elif send is not None:
            journey_rows.mark_sent(s, ready.journey_id, send.created_at)
        rec = _recipient_row(s, req.run_id, user_id)
        outcome = status
        if rec is not None and rec.status == "pending":
            rec.provider_response = detail[:500]
            if status == "failed" and send is not None and not maybe_delivered:
                # As a journey's step: a permanent failure falls back to the next reachable
                # channel (`_prepare` leaves out the channels that failed), unless an earlier
                # attempt may have been delivered. The recipient stays pending until then.
                s.add(rec)
                outcome = FALLBACK
            else:
                reason = ready.fell_back if status == "sent" else detail[:200]
                self._finish(s, rec, status, reason, ready.message.channel)
        if send is not None and opted_out:  # what the report reads as a provider opt-out, as journeys record it
            _record_provider_opt_out(s, send, ready, detail)
        if send is not None:  # last (LOCK ORDER): the hot counter rows stay locked until the commit
            report_rollup.count_send(s, send, previous, opted_out=opted_out)
        return outcome


class CampaignStopped(str):
    """A recipient's outcome ("skipped") because its campaign is paused or archived: the batch stops."""

    reason: str

    def __new__(cls, outcome: str, reason: str) -> CampaignStopped:
        made = super().__new__(cls, outcome)
        made.reason = reason
        return made


def _stop_if_campaign_stopped(fan: FanOut[Ready], outcome: Ready | str | None) -> None:
    if isinstance(outcome, CampaignStopped):
        fan.stop(outcome.reason)


async def _heartbeat_while_running(processed: Callable[[], int]) -> None:
    """Heartbeat every HEARTBEAT_EVERY seconds while the batch runs, not only after a recipient: a
    shard throttled to a few calls a minute (or waiting on one slow call) is alive between them.
    Temporal then sees a killed worker's batch as lost after the workflow's short heartbeat timeout
    (workflows/broadcast.py) and retries it, instead of after a minute."""
    while True:
        activity.heartbeat(processed())
        await asyncio.sleep(HEARTBEAT_EVERY.total_seconds())


# Primary-key reads of the hot path, as `Session.get` does them but with their statements built once:
# building one per call cost more CPU than running it. (A row already in the session is the one returned.)
_RECIPIENT_ROW = select(BroadcastRecipient).where(
    col(BroadcastRecipient.run_id) == bindparam("run_id"), col(BroadcastRecipient.user_id) == bindparam("user_id")
)
_SEND_ROW = select(Send).where(col(Send.key) == bindparam("key"))


def _recipient_row(s: Session, run_id: str, user_id: str) -> BroadcastRecipient | None:
    return s.exec(_RECIPIENT_ROW, params={"run_id": run_id, "user_id": user_id}).first()


def _send_row(s: Session, key: str) -> Send | None:
    return s.exec(_SEND_ROW, params={"key": key}).first()


def _failed_channels(s: Session, journey_id: str) -> dict[str, str]:
    """The channels a recipient's sends failed on for good (oldest first), each with its answer:
    a fallback leaves them out, as a journey's step excludes the channels it failed on."""
    rows = s.exec(
        select(Send.channel, Send.provider_response)
        .where(Send.journey_id == journey_id, Send.status == "failed")
        .order_by(col(Send.updated_at))
    ).all()
    return {channel: (answer or "failed")[:120] for channel, answer in rows}


def _vendor_pause(err: ProviderError, as_of: datetime) -> datetime | None:
    """Until when the shard pauses after this answer: a 429 with a Retry-After is the vendor
    throttling everyone, so the shard's next call waits for it (a workflow timer, no activity
    retry); any other transient fault only defers its own recipient."""
    wait = err.retry_after
    if err.status != 429 or wait is None or not math.isfinite(wait) or wait <= 0:
        return None
    return max(as_of, now_utc()) + timedelta(seconds=wait)  # the run's clock, as `not_before`


def _paused(result: BatchResult, until: datetime | None) -> BatchResult:
    """The batch's result for a shard paused until `until`: nothing due before then."""
    if until is None:
        return result
    if result.more_due:
        result.more_due, result.next_due = False, until
    elif result.next_due is not None:  # only recipients waiting their own time: not before the pause
        result.next_due = max(result.next_due, until)
    return result


def _record_provider_opt_out(s: Session, send: Send, ready: Ready, detail: str) -> None:
    """The failed send's outcome decision, saying the provider reported the recipient gone: the
    report counts provider opt-outs from it (`report_rollup.provider_opted_out`)."""
    decisions.record(
        s, key=f"{send.key}:outcome", journey_id=ready.journey_id, section_id=send.section_id, user_id=send.user_id,
        step_index=send.step_index, step_name=ready.message.step_name, outcome="failed", at=now_utc(),
        reason=detail[:200], channel=send.channel, detail={"provider_status": send.provider_status, "opted_out": PROVIDER_OPT_OUT},
    )  # fmt: skip


def _close_open_sends(s: Session, journey_id: str, reason: str | None) -> list[tuple[Send, str]]:
    """A recipient skipped after an attempt that got no final answer (retried, then no longer
    reachable, in the audience or the campaign active): that send is over. It is recorded failed
    (a call was made). If an attempt may have reached the provider (left in flight, or flagged:
    `sends.maybe_delivered`) it is flagged `possible_duplicate` and keeps its cap slot, as a
    journey's give-up (activities/journey.py `_give_up`); otherwise its cap slot is given back.
    Returns the closed sends with their previous status: the caller counts them, after the run
    row (LOCK ORDER)."""
    open_sends = s.exec(select(Send).where(Send.journey_id == journey_id, col(Send.status).in_(OPEN_SEND))).all()
    return [(send, _close_send(s, send, f"not retried: {reason}")[0]) for send in open_sends]


def _close_send(s: Session, send: Send, why: str) -> tuple[str, str]:
    """An open send ended without an answer that settles it: failed, its kept content dropped. If an
    attempt may have reached the provider (`sends.maybe_delivered`) it is flagged and keeps its cap
    slot, and `why` says so; otherwise the slot is given back. Its previous status and `why`."""
    maybe_delivered = sends.maybe_delivered(send)
    # Said once: a recipient that ended for this reason (`_prepare`) already says it.
    why += f" ({sends.MAYBE_DELIVERED})" if maybe_delivered and sends.MAYBE_DELIVERED not in why else ""
    previous, send.status, send.updated_at = send.status, "failed", now_utc()
    send.possible_duplicate = send.possible_duplicate or maybe_delivered
    send.message_enc = None  # final: the content kept for its retries goes (frozen_message.py)
    send.provider_response = f"{why}; last answer: {send.provider_response or 'none'}"[:2000]
    s.add(send)
    if not maybe_delivered:
        reservations.release(s, send.key)
    log_failed(s, send.key, send.provider_response, status=send.provider_status)  # the last attempt's answer
    return previous, why


def _open_sends_elsewhere(
    s: Session, run_id: str, user_id: str, step_channels: list[str], chosen: str | None
) -> list[Send]:
    """The recipient's sends on the step's other channels that a provider call started and no final
    answer ended (one primary-key read per other channel: none for a one-channel step)."""
    found = (s.get(Send, broadcast_send_key(run_id, user_id, ch)) for ch in step_channels if ch != chosen)
    return [send for send in found if send is not None and send.status in OPEN_SEND]


# This run's sends of a person under another recipient's journey: the ids merged into the person
# since the run listed them (a merge re-points journey and send rows to the person, keeping their
# ids). One read on the journeys' (section, user) index; sends by their journey index.
_SENT_UNDER_MERGED_IDS = (
    select(Send.key)
    .join(Journey, col(Journey.id) == col(Send.journey_id))
    .where(
        col(Journey.section_id) == bindparam("section_id"), col(Journey.user_id) == bindparam("user_id"),
        col(Journey.workflow_id) == bindparam("workflow_id"), col(Journey.id) != bindparam("journey_id"),
        col(Send.status).in_(("accepted", *OPEN_SEND)) | col(Send.possible_duplicate),
    )
    .limit(1)
)  # fmt: skip


def _sent_under_merged_ids(s: Session, batch: Batch, user_id: str, journey_id: str) -> bool:
    """Whether the run sent the person its message, or has a call of it open or maybe delivered,
    under a recipient row merged into them (another journey of the run now carrying the person)."""
    params = {
        "section_id": batch.section_id, "user_id": user_id,
        "workflow_id": broadcast_workflow_id(batch.run_id), "journey_id": journey_id,
    }  # fmt: skip
    return s.exec(_SENT_UNDER_MERGED_IDS, params=params).first() is not None
