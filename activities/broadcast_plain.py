"""The plain path of a batched run: fresh recipients prepared together, their acceptances recorded together.

One recipient at a time (`BroadcastActivities._prepare` and `_record_in`), a recipient cost two
transactions of ~20 statements, and one worker process topped out near 100-170 recipients/s on that
statement overhead (docs/performance.md, benchmark 3). Most recipients of a run take the plainest
path: pending since the run listed them and never attempted, in the audience and the send window,
not held out, reachable on a channel of their step, within caps and priority. Here a chunk of them
shares one transaction, each read is done once for the chunk, and each write is one statement
with a parameter set per recipient; their acceptances are recorded the same way.

This path decides nothing the one-recipient path would decide otherwise: a recipient it cannot
take as plain (a retry, a fallback, a deferral, a skip, a holdout, a cap or priority refusal, a
merged id or a person with a row merged into them, an erased person, a subscriber list deciding
reach, a template missing data) is left out of its answer and goes through `_prepare`, which reads
it again and decides as it always did.
It writes nothing for a recipient it leaves out, but the cap slot of one whose message could not
be composed (given back in the same transaction).

Lock order (activities/broadcast.py, LOCK ORDER): the chunk's users' cap locks in one call, then
their own rows (journeys, slots, sends, recipients), then the run row, then the hot counter rows
last, held until the commit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from activities.broadcast_batch import Batch, Ready
from activities.broadcast_message import BatchMessages
from domain import schedule as sched
from domain.allocation import keep_or_allocate
from domain.campaign import Channel, Variation
from domain.channels import choose_channel
from domain.conditions import matches
from domain.identifiers import sendable_recipient
from domain.render import MissingRequired
from security.crypto import SecretBox
from store import journey_rows, report_rollup, reservations
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.reachability import Reach, reach_many
from store.sends import SentMessage
from store.statements import row_of, table_of
from store.tables import Journey, Send, User, now_utc
from store.users import unmerged_users
from workflows.feed_models import BatchRequest
from workflows.ids import batched_journey_id, broadcast_send_key, broadcast_workflow_id

_SEND = table_of(Send)
_RECIPIENT = table_of(BroadcastRecipient)
_RUN = table_of(BroadcastRun)
_INSERT_SENDS = _SEND.insert()
_ACCEPT = (
    update(_SEND)
    .where(_SEND.c.key == bindparam("send_key"), _SEND.c.status == "in_flight")
    .values(status="accepted", message_enc=None, provider_status=bindparam("provider_status"),
            provider_response=bindparam("detail"), updated_at=bindparam("at", type_=_SEND.c.updated_at.type))
)  # fmt: skip
_SENT_RECIPIENT = (
    update(_RECIPIENT)
    .where(_RECIPIENT.c.run_id == bindparam("of_run"), _RECIPIENT.c.user_id == bindparam("of_user"),
           _RECIPIENT.c.status == "pending")
    .values(status="sent", reason=None, channel=bindparam("channel"), provider_response=bindparam("detail"))
)  # fmt: skip
# What the record of an acceptance needs of its send row (not its kept message: a large encrypted blob).
_SENT_FIELDS = [f.name for f in fields(SentMessage)]
_SEND_STATE = core_select(
    *(_SEND.c[name] for name in dict.fromkeys(["key", "status", "attempts", "possible_duplicate", *_SENT_FIELDS]))
).where(_SEND.c.key.in_(bindparam("keys", expanding=True)))
_SENT_ON_RUN = update(_RUN).where(_RUN.c.id == bindparam("run_id")).values(sent=_RUN.c.sent + bindparam("n"))


@dataclass(frozen=True)
class Accepted:
    """A plain recipient's provider call, accepted: what its record needs."""

    user_id: str
    ready: Ready
    detail: str  # the vendor's answer, as kept
    provider_status: int | None


@dataclass(frozen=True)
class _Plan:
    """A recipient the chunk takes as plain, before its message is composed."""

    user: User
    variation: Variation
    channel: str
    journey_id: str
    key: str
    reach: Reach
    items: list[dict[str, Any]]  # the recipient row's (a feed run's products)


class PlainPath:
    def __init__(self, messages: BatchMessages, box: SecretBox, priority_window: timedelta) -> None:
        self.messages = messages
        self.box = box
        self.priority_window = priority_window

    # ------------------------------------------------------------ prepare

    def prepare(self, s: Session, req: BatchRequest, batch: Batch, user_ids: list[str]) -> dict[str, Ready]:
        """The chunk's plain recipients, each with its send row in flight, by user id (see the module)."""
        plans = self._plans(s, req, batch, user_ids)
        if not plans:
            return {}
        spec = batch.spec
        verdicts = reservations.reserve_many(
            s,
            [
                reservations.SlotRequest(
                    key=p.key, section_id=batch.section_id, user_id=p.user.id, channel=p.channel,
                    campaign_id=batch.campaign_id, priority=spec.priority, as_of=req.as_of,
                    campaign_limit=cap.max_messages if cap else None,
                    campaign_period=cap.period if cap else timedelta(days=1),
                )
                for p in plans
                for cap in [spec.settings.frequency_caps.get(Channel(p.channel))]
            ],
            batch.cap_policy,
            self.priority_window,
        )  # fmt: skip
        granted = [p for p, verdict in zip(plans, verdicts, strict=True) if verdict.granted]
        existing = journey_rows.existing_ids(s, [p.journey_id for p in granted])
        ready: dict[str, Ready] = {}
        send_rows: list[Send] = []
        journeys: list[Journey] = []
        for plan in granted:
            composed = self._compose(s, req, batch, plan)
            if composed is None:
                reservations.release(s, plan.key)  # `_prepare` takes it again, and skips the recipient
                continue
            send, ready[plan.user.id] = composed
            send_rows.append(send)
            if plan.journey_id not in existing:
                journeys.append(
                    journey_rows.new_journey(
                        journey_id=plan.journey_id, workflow_id=broadcast_workflow_id(batch.run_id),
                        section_id=batch.section_id, campaign_id=batch.campaign_id,
                        campaign_version=batch.campaign_version, priority=spec.priority, user_id=plan.user.id,
                        variation=plan.variation, is_test=plan.user.is_test, at=req.as_of, batched=True,
                    )
                )  # fmt: skip
        if send_rows:
            s.execute(_INSERT_SENDS, [row_of(send) for send in send_rows])
        journey_rows.enroll_new(s, journeys)  # last: the cohort counters are hot rows (LOCK ORDER)
        return ready

    def _plans(self, s: Session, req: BatchRequest, batch: Batch, user_ids: list[str]) -> list[_Plan]:
        """The chunk's recipients whose path is plain up to the cap check, in the chunk's order."""
        spec = batch.spec
        recipients = s.exec(
            select(BroadcastRecipient).where(
                BroadcastRecipient.run_id == batch.run_id, col(BroadcastRecipient.user_id).in_(user_ids)
            )
        ).all()
        fresh = {
            r.user_id: r for r in recipients
            if r.status == "pending" and r.provider_response is None and r.not_before is None
        }  # fmt: skip
        if not fresh or journey_rows.campaign_status(s, batch.campaign_id) != "active":
            return []
        users = unmerged_users(s, [u for u in user_ids if u in fresh])
        audience = spec.audience
        in_audience = [
            u for u in user_ids if u in users and matches(audience.conditions, users[u].attributes, audience.match)
        ]
        firsts = journey_rows.first_variations(s, batch.section_id, batch.campaign_id, in_audience)
        variations = {u: keep_or_allocate(batch.campaign_id, u, spec.variations, firsts.get(u)) for u in in_audience}
        sending = [u for u in in_audience if not variations[u].control and self._in_window(req, batch, users[u])]
        journey_of = {u: batched_journey_id(batch.run_id, u) for u in sending}
        attempted = set(
            s.exec(select(Send.journey_id).where(col(Send.journey_id).in_(list(journey_of.values())))).all()
        )
        # A person with another journey of this run (a recipient row merged into them since the run
        # listed it: the merge re-points its journey and send to the person) may have been sent the
        # message under that row: `_prepare` decides. One read on the journeys' (section, user) index.
        merged_in = set(
            s.exec(
                select(Journey.user_id).where(
                    col(Journey.section_id) == batch.section_id, col(Journey.user_id).in_(sending),
                    col(Journey.workflow_id) == broadcast_workflow_id(batch.run_id),
                    col(Journey.id).not_in(list(journey_of.values())),
                )
            ).all()
        ) if sending else set()  # fmt: skip
        sending = [u for u in sending if journey_of[u] not in attempted and u not in merged_in]
        step_channels = {u: [c.value for c in variations[u].steps[0].messages] for u in sending}
        everyone = [ch for u in sending for ch in step_channels[u]]
        reach = reach_many(s, batch.section_id, sending, everyone, batch.integrations) if sending else {}
        if reach is None:
            return []
        priority = [c.value for c in spec.channel_priority]
        plans: list[_Plan] = []
        for u in sending:
            choice = choose_channel(priority, step_channels[u], reach[u].unreachable)
            if choice.channel is None:
                continue
            channel = str(choice.channel)
            plans.append(
                _Plan(
                    user=users[u], variation=variations[u], channel=channel, journey_id=journey_of[u],
                    key=broadcast_send_key(batch.run_id, u, channel), reach=reach[u], items=list(fresh[u].items),
                )
            )  # fmt: skip
        return plans

    @staticmethod
    def _in_window(req: BatchRequest, batch: Batch, user: User) -> bool:
        window = batch.spec.send_window
        if window is None:
            return True
        return sched.in_window(req.as_of, *sched.recipient_window(window, user.attributes, user.locale))

    def _compose(self, s: Session, req: BatchRequest, batch: Batch, plan: _Plan) -> tuple[Send, Ready] | None:
        """The recipient's message, its send row (in flight, with the message kept for retries) and what
        its call needs; None if the template misses required data (`_prepare` skips the recipient)."""
        r, channel = plan.reach, plan.channel
        integration = r.integrations[channel]
        recipient = sendable_recipient(channel, self.box.decrypt(r.opt_ins[channel].value_enc))
        try:
            frozen = self.messages.compose(
                s, batch, as_of=req.as_of, key=plan.key, user=plan.user, variation=plan.variation, channel=channel,
                recipient=recipient, items=plan.items, integration=integration,
            )  # fmt: skip
        except MissingRequired:
            return None
        send = self.messages.new_send(
            batch, frozen, key=plan.key, journey_id=plan.journey_id, variation_id=plan.variation.id, channel=channel,
            integration_id=integration.id, user_id=plan.user.id, as_of=req.as_of,
        )  # fmt: skip
        ready = self.messages.ready(
            batch, frozen, integration, channel=channel, key=plan.key, journey_id=plan.journey_id,
            opt_in_id=r.opt_ins[channel].id,
        )  # fmt: skip
        return send, ready

    # ------------------------------------------------------------ record

    def record_accepted(self, s: Session, req: BatchRequest, accepted: list[Accepted]) -> set[str]:
        """Record these accepted calls together: the users recorded. One left out (its send or recipient
        no longer as its plain preparation left it) is recorded alone by the caller (`_record`)."""
        plain = [a for a in accepted if a.ready.before is None and a.ready.fell_back is None]
        if not plain:
            return set()
        sends = {row.key: row for row in s.execute(_SEND_STATE, {"keys": [a.ready.send_key for a in plain]})}
        pending = set(
            s.exec(
                select(BroadcastRecipient.user_id).where(
                    BroadcastRecipient.run_id == req.run_id,
                    col(BroadcastRecipient.user_id).in_([a.user_id for a in plain]),
                    BroadcastRecipient.status == "pending",
                    col(BroadcastRecipient.not_before).is_(None),
                )
            ).all()
        )
        taken = [
            a for a in plain
            if a.user_id in pending and (send := sends.get(a.ready.send_key)) is not None
            and send.status == "in_flight" and send.attempts == a.ready.attempt and not send.possible_duplicate
        ]  # fmt: skip
        if not taken:
            return set()
        now = now_utc()
        s.execute(
            _ACCEPT,
            [{"send_key": a.ready.send_key, "provider_status": a.provider_status, "detail": a.detail[:2000], "at": now}
             for a in taken],
        )  # fmt: skip
        journey_rows.mark_sent_many(s, [(a.ready.journey_id, sends[a.ready.send_key].created_at) for a in taken])
        s.execute(
            _SENT_RECIPIENT,
            [{"of_run": req.run_id, "of_user": a.user_id, "channel": a.ready.message.channel, "detail": a.detail[:500]}
             for a in taken],
        )  # fmt: skip
        s.execute(_SENT_ON_RUN, {"run_id": req.run_id, "n": len(taken)})  # then the counters (LOCK ORDER)
        report_rollup.count_accepted(s, [_sent_message(sends[a.ready.send_key]) for a in taken])
        return {a.user_id for a in taken}


def _sent_message(row: Any) -> SentMessage:
    return SentMessage(**{name: getattr(row, name) for name in _SENT_FIELDS})
