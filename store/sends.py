"""Sends: marking one accepted with prepared Core statements (store/statements.py): every
delivered message does this, and the ORM's load-modify-flush cost more CPU than the two
statements; the rule for a send given up after an attempt whose outcome is unknown; and reading
a journey's sends for operators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlmodel import Session, col

from store.statements import table_of
from store.tables import Send

SEND = table_of(Send)
_c = SEND.c
_BEFORE = select(
    _c.status, _c.possible_duplicate, _c.campaign_id, _c.user_id, _c.created_at, _c.variation_id, _c.channel, _c.step_index
).where(_c.key == bindparam("send_key"))
_ACCEPT = (
    update(SEND)
    .where(_c.key == bindparam("send_key"))
    .values(
        status="accepted",
        provider_status=bindparam("answer_status"),
        provider_message_id=bindparam("answer_id"),
        provider_response=bindparam("answer_body"),
        updated_at=bindparam("at", type_=_c.updated_at.type),
        message_enc=None,  # accepted: no retry needs the message (and its personal data) any more
    )
)
# Accepted by a vendor that honours the idempotency key: an earlier attempt whose outcome was
# unknown was de-duplicated by the vendor, so the send is no longer a possible duplicate.
_ACCEPT_SETTLED = _ACCEPT.values(possible_duplicate=False)


# Added to the recorded reason of a send that failed for good after an attempt whose outcome is
# unknown (docs/channels.md, "Retries"): it may have been delivered.
MAYBE_DELIVERED = "an earlier attempt may have been delivered: no fallback"
# The send was recorded `in_flight` before an attempt and nothing known came back since: the
# attempt timed out, lost its connection mid-answer, or its worker died (`activities/delivery.py`).
UNKNOWN = "in_flight"


def maybe_delivered(send: Send | None, *, attempt_running: bool = False) -> bool:
    """Whether an attempt of `send` may have reached the provider although no acceptance is recorded.

    Flagged `possible_duplicate` (an attempt's outcome was unknown), or, once no attempt runs
    any more (a give-up: the budget spent, an exit, an error not retried), left `in_flight`.
    `attempt_running`: the caller's own attempt marked the send `in_flight` itself, so only the
    flag tells of an earlier one. Such a send that fails keeps its cap slot and falls back to no
    other channel: the user may have the message already.
    """
    if send is None:
        return False
    return send.possible_duplicate or (not attempt_running and send.status == UNKNOWN)


@dataclass(frozen=True)
class SentMessage:
    """What the report counters need of a send that got a final status."""

    key: str
    campaign_id: str
    user_id: str
    created_at: datetime
    variation_id: str
    channel: str
    step_index: int


@dataclass(frozen=True)
class Accepted:
    message: SentMessage
    previous_status: str
    possible_duplicate: bool


def accept(
    s: Session, key: str, status: int, message_id: str | None, body: str, at: datetime, *, settled: bool = False
) -> Accepted | None:
    """Record the provider's acceptance of send `key`; None if there is no such send. `settled`: the
    provider honours the idempotency key, so the acceptance clears the possible-duplicate flag."""
    before = s.execute(_BEFORE, {"send_key": key}).first()
    if before is None:
        return None
    answer = {"send_key": key, "answer_status": status, "answer_id": message_id, "answer_body": body, "at": at}
    s.execute(_ACCEPT_SETTLED if settled else _ACCEPT, answer)
    message = SentMessage(
        key, before.campaign_id, before.user_id, before.created_at, before.variation_id, before.channel, before.step_index
    )
    return Accepted(message, before.status, before.possible_duplicate and not settled)


def of_journeys(session: Session, journey_ids: list[str]) -> dict[str, list[Send]]:
    """The sends of these journeys, by journey, in step then creation order."""
    if not journey_ids:
        return {}
    rows = session.exec(  # type: ignore[call-overload]
        select(Send)
        .where(col(Send.journey_id).in_(journey_ids))
        .order_by(col(Send.step_index), col(Send.created_at))
    ).scalars()
    out: dict[str, list[Send]] = {}
    for row in rows:
        out.setdefault(row.journey_id, []).append(row)
    return out
