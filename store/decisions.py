"""The per-user decision trace: one row per decision, rewritten idempotently by its key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from store.tables import Decision


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
    row = session.get(Decision, key) or Decision(
        key=key,
        journey_id=journey_id,
        section_id=section_id,
        user_id=user_id,
        step_index=step_index,
        step_name=step_name,
        outcome=outcome,
        at=at,
    )
    row.outcome, row.reason, row.channel, row.at = outcome, reason, channel, at
    row.detail = detail or {}
    session.add(row)


def for_journey(session: Session, journey_id: str) -> list[Decision]:
    return list(
        session.exec(
            select(Decision).where(Decision.journey_id == journey_id).order_by(Decision.step_index, Decision.at)  # type: ignore[arg-type]
        ).all()
    )
