"""The per-user decision trace: one row per decision, rewritten idempotently by its key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from domain.text import clipped
from store.statements import per_dialect, table_of, upsert_for
from store.tables import REASON_LENGTH, Decision

DECISION = table_of(Decision)
# What a rewrite of an existing key replaces; the journey, user and step it belongs to stay.
REWRITTEN = ("outcome", "reason", "channel", "at", "detail")


@per_dialect
def _upsert(dialect_name: str) -> Any:
    ins = upsert_for(dialect_name, DECISION)
    return ins.on_conflict_do_update(index_elements=["key"], set_={c: ins.excluded[c] for c in REWRITTEN})


def record(
    session: Session,
    *,
    key: str,
    journey_id: str,
    section_id: str,
    user_id: str,
    step_index: int,
    step_name: str,
    outcome: str,
    at: datetime,
    reason: str | None = None,
    channel: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write the decision under `key`, or rewrite it (one UPSERT: no read, no ORM flush)."""
    row = {
        "key": key,
        "journey_id": journey_id,
        "section_id": section_id,
        "user_id": user_id,
        "step_index": step_index,
        "step_name": step_name,
        "outcome": outcome,
        "reason": clipped(reason, REASON_LENGTH),
        "channel": channel,
        "at": at,
        "detail": detail or {},
    }
    session.execute(_upsert(session), row)


_DETAIL = core_select(DECISION.c.detail).where(DECISION.c.key == bindparam("decision_key"))


def detail_of(session: Session, key: str) -> dict[str, Any] | None:
    """The detail recorded under `key`; None if nothing was recorded yet."""
    detail: dict[str, Any] | None = session.execute(_DETAIL, {"decision_key": key}).scalar_one_or_none()
    return detail


def for_journey(session: Session, journey_id: str) -> list[Decision]:
    return list(
        session.exec(
            select(Decision)
            .where(Decision.journey_id == journey_id)
            # A step's decision and its outcome can share one workflow time: the decision first.
            .order_by(col(Decision.step_index), col(Decision.at), case((col(Decision.outcome) == "decided", 0), else_=1))
        ).all()
    )
