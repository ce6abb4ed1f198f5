"""The journey row and the few campaign/section fields a journey step reads, as prepared Core
statements (store/statements.py): the journey activities run these for every journey."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, exists, insert, select, update
from sqlmodel import Session

from domain.campaign import Variation
from domain.text import clipped
from store import report_rollup
from store.statements import per_dialect, row_of, table_of, upsert_for
from store.tables import REASON_LENGTH, Campaign, Event, Journey, Section

JOURNEY = table_of(Journey)
# The status of an enrollment whose trigger was merged into the person's running journey.
MERGED = "merged"
_j = JOURNEY.c
_VARIATION = select(_j.variation_id).where(_j.id == bindparam("journey_id"))
_VARIATION_AND_END = select(_j.variation_id, _j.status, _j.exit_reason).where(_j.id == bindparam("journey_id"))
EXITED = "exited"
# The variation of a person's earliest journey in a campaign, ordered as the report's cohort is
# (`store/report_rollup.py::_rebuild_cohorts`: first trigger, then the least variation id); on
# `ix_journey_user` (section, user), whose rows are few per person.
_FIRST_VARIATION = (
    select(_j.variation_id)
    .where(_j.section_id == bindparam("section_id"), _j.user_id == bindparam("user_id"),
           _j.campaign_id == bindparam("campaign_id"))
    .order_by(_j.triggered_at, _j.variation_id)
    .limit(1)
)  # fmt: skip
_END = (
    update(JOURNEY)
    .where(_j.id == bindparam("journey_id"))
    .values(status=bindparam("new_status"), exit_reason=bindparam("reason"), ended_at=bindparam("at", type_=_j.ended_at.type))
    .returning(_j.section_id, _j.user_id, _j.campaign_id, _j.campaign_version, _j.variation_id)
)
# A journey still active only: an end recorded from outside its workflow must not overwrite its own.
_END_ACTIVE = _END.where(_j.status == "active")
# A journey's own end that is no exit (it completed): an exit recorded already stands, as a merge
# records the exit it owes (`exit_owed_at_merge`) while its steps may still complete.
_END_UNLESS_EXITED = _END.where(_j.status != EXITED)
# The active journeys of these workflow ids (moved to a person by a merge), ended as exited.
_EXIT_OWED = (
    update(JOURNEY)
    .where(_j.section_id == bindparam("of_section"), _j.workflow_id == bindparam("of_workflow"),
           _j.status == "active")
    .values(status=EXITED, exit_reason=bindparam("reason"), ended_at=bindparam("at", type_=_j.ended_at.type))
)  # fmt: skip
_e = table_of(Event).c
# A journey enrolled at a trigger whose dispatch has not completed: its start (or, if another run
# took the trigger, its withdrawal as merged) is still on its way. Its row was recorded with the
# event (triggered when received); the dispatch withdraws it before marking the event dispatched.
_START_ON_ITS_WAY = exists().where(
    _e.section_id == _j.section_id, _e.user_id == _j.user_id, _e.received_at == _j.triggered_at,
    _e.dispatched == False,  # noqa: E712  (SQL expression)
)  # fmt: skip
# The other active journeys of a workflow id (on `workflow_id`'s index), ended: see `end_superseded`.
_END_SUPERSEDED = (
    update(JOURNEY)
    .where(_j.workflow_id == bindparam("of_workflow"), _j.id != bindparam("kept_id"), _j.status == "active",
           ~_START_ON_ITS_WAY)
    .values(status=bindparam("new_status"), exit_reason=bindparam("reason"),
            ended_at=bindparam("at", type_=_j.ended_at.type))
    .returning(_j.id)
)  # fmt: skip
# The status and reason of a journey whose run was closed outside Rejoin, found only when a later
# run of its workflow id enrolled itself (Temporal no longer says how that run closed).
SUPERSEDED = "exited"
SUPERSEDED_REASON = "workflow_closed"
_SENT = update(JOURNEY).where(_j.id == bindparam("journey_id")).values(last_sent_at=bindparam("at", type_=_j.last_sent_at.type))
# The last step's send: the journey's end recorded in the same statement (no finish step after it).
_SENT_AND_COMPLETED = (
    update(JOURNEY)
    .where(_j.id == bindparam("journey_id"))
    .values(last_sent_at=bindparam("at", type_=_j.last_sent_at.type), status="completed", exit_reason=None,
            ended_at=bindparam("at", type_=_j.ended_at.type))  # fmt: skip
)
_IS_PREVIEW = select(_j.is_preview).where(_j.id == bindparam("journey_id"))
# A preview that reaches a journey of the test user already running makes it a preview too.
_MARK_PREVIEW = (
    update(JOURNEY)
    .where(_j.workflow_id == bindparam("of_workflow"), _j.status == "active", _j.is_test == True)  # noqa: E712
    .values(is_preview=True)
)
_CAMPAIGN_STATUS = select(table_of(Campaign).c.status).where(table_of(Campaign).c.id == bindparam("campaign_id"))
_SECTION_CAP = select(table_of(Section).c.global_cap_messages).where(table_of(Section).c.id == bindparam("section_id"))


@per_dialect
def _insert(dialect_name: str) -> Any:
    return upsert_for(dialect_name, JOURNEY).on_conflict_do_nothing(index_elements=["id"]).returning(_j.id)


def insert_new(s: Session, journey: Journey) -> bool:
    """Insert the journey unless its id exists (a retried enroll); True if this call inserted it."""
    return s.execute(_insert(s), row_of(journey)).first() is not None


def new_journey(
    *, journey_id: str, workflow_id: str, section_id: str, campaign_id: str, campaign_version: int, priority: int,
    user_id: str, variation: Variation, is_test: bool, at: datetime, batched: bool = False, is_preview: bool = False,
) -> Journey:  # fmt: skip
    """The row of a journey allocated to `variation` at `at` (a holdout ends as it starts).

    `is_preview`: started by a preview; its steps send while the campaign is a draft or paused.

    `batched`: a batched run's recipient (activities/broadcast.py). Its row records the
    allocation (the report cohort's first trigger and variation) and, once sent, the send time
    that priority compares. No workflow of its own runs it, so it is never "active" (ingestion
    signals the workflows of active journeys): it ends as it starts, "completed" (its delivery
    is the run's: the recipient row and the send) or a holdout.
    """
    ends = variation.control or batched
    return Journey(
        id=journey_id,
        workflow_id=workflow_id,
        section_id=section_id,
        campaign_id=campaign_id,
        campaign_version=campaign_version,
        priority=priority,
        user_id=user_id,
        variation_id=variation.id,
        is_control=variation.control,
        is_test=is_test,
        is_preview=is_preview,
        status="holdout" if variation.control else "completed" if batched else "active",
        triggered_at=at,
        ended_at=at if ends else None,
    )


def enroll(s: Session, journey: Journey) -> bool:
    """Record a new journey and start its user's cohort, in the caller's transaction (the report
    counters never drift from the rows); False if the journey was recorded already (a retry)."""
    if not insert_new(s, journey):
        return False
    report_rollup.register_cohort(s, journey)
    return True


# Only a journey no step has touched is withdrawn: still active (or a holdout, which ends as it
# starts) and never sent.
_WITHDRAW = (
    update(JOURNEY)
    .where(
        _j.id.in_(bindparam("journey_ids", expanding=True)),
        _j.status.in_(["active", "holdout"]),
        _j.last_sent_at.is_(None),
    )
    .values(status=MERGED, ended_at=_j.triggered_at)
)


def withdraw(s: Session, journey_ids: list[str]) -> int:
    """End journeys the API enrolled whose trigger reached another journey of the person already
    running (signal-with-start only signalled it): no workflow runs them. The row is kept, ended
    as "merged" at its trigger time: the person did trigger then, and a report's cohort is the
    person's earliest journey row (`store/reports.py`). Returns how many rows it ended."""
    if not journey_ids:
        return 0
    return s.connection().execute(_WITHDRAW, {"journey_ids": journey_ids}).rowcount


def first_variation(s: Session, section_id: str, campaign_id: str, user_id: str) -> str | None:
    """The variation of the person's earliest journey in the campaign (journey rows follow the
    person through merges, `store/users.py::merge_users`); None if they have none. Allocation
    keeps it while the spec has it (`domain.allocation.keep_or_allocate`)."""
    params = {"section_id": section_id, "campaign_id": campaign_id, "user_id": user_id}
    return s.execute(_FIRST_VARIATION, params).scalar_one_or_none()


def first_variations(s: Session, section_id: str, campaign_id: str, user_ids: list[str]) -> dict[str, str]:
    """`first_variation` of each of these users, in one read; users with no journey are left out."""
    rows = s.execute(
        select(_j.user_id, _j.variation_id)
        .where(_j.section_id == section_id, _j.campaign_id == campaign_id, _j.user_id.in_(user_ids))
        .order_by(_j.triggered_at.desc(), _j.variation_id.desc())
    )
    return dict(rows.tuples().all())  # the earliest of each user is written last


# Reason of a journey a merge ends because the person it joined was held out of its campaign.
MERGED_INTO_HOLDOUT = "merged_into_holdout"
# A person's journeys in these campaigns, earliest first per campaign as `_FIRST_VARIATION` orders
# them (on `ix_journey_user`: a person has few rows).
_PERSON_JOURNEYS = (
    select(_j.campaign_id, _j.variation_id, _j.workflow_id, _j.status)
    .where(_j.section_id == bindparam("section_id"), _j.user_id == bindparam("user_id"),
           _j.campaign_id.in_(bindparam("campaign_ids", expanding=True)))
    .order_by(_j.campaign_id, _j.triggered_at, _j.variation_id)
)  # fmt: skip


def held_out_but_running(s: Session, section_id: str, user_id: str, controls: dict[str, str]) -> list[tuple[str, str]]:
    """(workflow id, campaign id) of the person's active journeys in a campaign whose earliest
    journey of theirs is in its control variation (`controls`: campaign id -> control variation id).

    Read right after a merge (`store/users.py::merge_users` re-points the merged user's journeys):
    a device's treated journey joining a held-out person, or a person's treated journey joining a
    device held out before it, would message someone the report counts in the holdout (its cohort
    is the earliest journey), so their purchases measured the holdout with a message's effect.
    The earliest allocation wins, as allocation (`first_variation`) and `merged_duplicate` decide."""
    if not controls:
        return []
    params = {"section_id": section_id, "user_id": user_id, "campaign_ids": sorted(controls)}
    first: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for campaign_id, variation_id, workflow_id, status in s.execute(_PERSON_JOURNEYS, params).all():
        held = first.setdefault(campaign_id, variation_id) == controls[campaign_id]
        if held and status == "active" and variation_id != controls[campaign_id]:
            out.append((workflow_id, campaign_id))
    return out


def existing_ids(s: Session, journey_ids: list[str]) -> set[str]:
    """Which of these journeys are recorded already."""
    return set(s.execute(select(_j.id).where(_j.id.in_(journey_ids))).scalars())


def enroll_new(s: Session, journeys: list[Journey]) -> None:
    """`enroll` for journeys known to be new (`existing_ids`), in two statements for all: a batch's
    recipients (activities/broadcast_plain.py)."""
    if journeys:
        s.execute(insert(JOURNEY), [row_of(j) for j in journeys])
        report_rollup.register_cohorts(s, journeys)


def mark_sent_many(s: Session, sent: list[tuple[str, datetime]]) -> None:
    """`mark_sent` of several journeys (id, send time), one statement."""
    if sent:
        s.execute(_SENT, [{"journey_id": journey_id, "at": at} for journey_id, at in sent])


def variation_of(s: Session, journey_id: str) -> str | None:
    """The journey's variation id; None if there is no such journey."""
    return s.execute(_VARIATION, {"journey_id": journey_id}).scalar_one_or_none()


def variation_and_exit(s: Session, journey_id: str) -> tuple[str | None, str | None]:
    """The journey's variation id (None: no such journey) and, if its row is exited already (the exit
    a merge owed it, `exit_owed_at_merge`, or another end recorded from outside its workflow), its
    exit reason: a step deciding then sends nothing, though no exit signal has reached the workflow."""
    row = s.execute(_VARIATION_AND_END, {"journey_id": journey_id}).first()
    if row is None:
        return None, None
    variation_id, status, reason = row
    return variation_id, (reason or EXITED) if status == EXITED else None


def exit_owed_at_merge(s: Session, section_id: str, exits: list[tuple[str, str]], at: datetime) -> None:
    """Record as exited, in the merge's transaction, the active journeys of these workflow ids
    (workflow id, exit reason): the exits a merge owes the journeys it moved to the person. Their
    signals follow the commit, and a step due meanwhile decided with the merged person in view but
    not their exit, and sent after their purchase. Its decision now sees the row (`variation_and_exit`)."""
    for workflow_id, reason in exits:
        reason_kept = clipped(reason, REASON_LENGTH)
        s.execute(_EXIT_OWED, {"of_section": section_id, "of_workflow": workflow_id, "reason": reason_kept, "at": at})


class Ended(NamedTuple):
    """What the trace entry of a journey's end needs of its row (`end`)."""

    section_id: str
    user_id: str
    campaign_id: str
    campaign_version: int
    variation_id: str


def end(s: Session, journey_id: str, status: str, exit_reason: str | None, at: datetime) -> Ended | None:
    """Record how the journey ended; its row's `Ended` fields, or None if there is no such journey.
    A completion leaves an exit recorded already (`exit_owed_at_merge`) as it is: then None too."""
    reason = clipped(exit_reason, REASON_LENGTH)
    params = {"journey_id": journey_id, "new_status": status, "reason": reason, "at": at}
    row = s.execute(_END if status == EXITED else _END_UNLESS_EXITED, params).first()
    return Ended(*row) if row is not None else None


def end_if_active(s: Session, journey_id: str, status: str, exit_reason: str, at: datetime) -> bool:
    """Record the end of a journey whose workflow ended without recording it (closed outside Rejoin:
    terminated in the Temporal UI, failed, timed out); True if the row was still active."""
    reason = clipped(exit_reason, REASON_LENGTH)
    params = {"journey_id": journey_id, "new_status": status, "reason": reason, "at": at}
    return s.execute(_END_ACTIVE, params).first() is not None


def end_superseded(s: Session, workflow_id: str, journey_id: str, at: datetime) -> list[str]:
    """End the other active journeys of `workflow_id` when the run of `journey_id` enrolls itself;
    the ids it ended. Temporal runs one execution of a workflow id at a time, so their runs are
    closed: closed outside Rejoin (an operator's terminate) with the row left active, which made
    the store answer the next trigger "running" (no enrollment at the trigger, so this run enrolls
    itself). Left active, a workflow id had two open journeys: the old one shown with the new
    run's live state and counted by priority and exits for ever.

    Not ended: a journey enrolled at a trigger whose dispatch has not completed (`_START_ON_ITS_WAY`):
    a concurrent request's trigger this run overtook, which its dispatch withdraws as merged."""
    params = {"of_workflow": workflow_id, "kept_id": journey_id, "new_status": SUPERSEDED,
              "reason": SUPERSEDED_REASON, "at": at}  # fmt: skip
    return list(s.execute(_END_SUPERSEDED, params).scalars())


def mark_sent(s: Session, journey_id: str, at: datetime, *, completes: bool = False) -> None:
    """Record a send at `at`; `completes`: it was the last step, so the journey ends with it."""
    s.execute(_SENT_AND_COMPLETED if completes else _SENT, {"journey_id": journey_id, "at": at})


def started_by_preview(s: Session, journey_id: str) -> bool:
    """Whether the journey was started by a preview (False if there is no such journey)."""
    return bool(s.execute(_IS_PREVIEW, {"journey_id": journey_id}).scalar_one_or_none())


def mark_preview(s: Session, workflow_id: str) -> int:
    """Make the test user's active journeys of `workflow_id` previews: a preview that reaches one
    already running re-triggers it rather than starting its own; how many rows it marked."""
    return s.connection().execute(_MARK_PREVIEW, {"of_workflow": workflow_id}).rowcount


def campaign_status(s: Session, campaign_id: str) -> str | None:
    return s.execute(_CAMPAIGN_STATUS, {"campaign_id": campaign_id}).scalar_one_or_none()


def section_cap(s: Session, section_id: str) -> int | None:
    """The section's own global cap (None: no such section, or the deployment default)."""
    return s.execute(_SECTION_CAP, {"section_id": section_id}).scalar_one_or_none()
