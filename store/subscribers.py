"""Subscriber-list reads and writes: the effective opt-in of an identifier, staging, switching.

Override rule (seeds): a synced list replaces every earlier opt-in and opt-out of the channel,
API-made ones included. Later API calls still apply on top. So for an integration with an
active list, an identifier is opted in when its latest API opt-in/out is newer than the list's
activation and says "in", or, failing such a newer API call, when the active list holds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from store.subscriber_tables import SubscriberEntry, SubscriberList, SubscriberRejection, SubscriberSync
from store.tables import OptIn


def effective_opt_in(
    s: Session, lst: SubscriberList, section_id: str, channel: str, hashes: list[str]
) -> OptIn | None:
    """The opt-in that makes one of `hashes` reachable under list `lst`, or None."""
    assert lst.active_generation is not None and lst.activated_at is not None
    api_rows = s.exec(
        select(OptIn).where(
            OptIn.section_id == section_id, OptIn.channel == channel, col(OptIn.value_hash).in_(hashes)
        )
    ).all()
    newer = {r.value_hash: r for r in api_rows if r.updated_at > lst.activated_at}
    for row in sorted(newer.values(), key=lambda r: r.updated_at, reverse=True):
        if row.opted_in:
            return row
    rest = [h for h in hashes if h not in newer]
    if not rest:
        return None
    entry = s.exec(
        select(SubscriberEntry).where(
            SubscriberEntry.integration_id == lst.integration_id,
            SubscriberEntry.generation == lst.active_generation,
            col(SubscriberEntry.value_hash).in_(rest),
        )
    ).first()
    if entry is None:
        return None
    # Not stored: a view of the list entry in the shape delivery reads (value_enc, hash).
    return OptIn(
        section_id=section_id, channel=channel, identifier_type="list", value_hash=entry.value_hash,
        value_enc=entry.value_enc, opted_in=True, source="list", updated_at=lst.activated_at,
    )  # fmt: skip


def insert_ignoring(s: Session, table: type, rows: list[dict[str, object]]) -> None:
    """Bulk insert that ignores rows already there (a retried batch, a duplicate line).

    One statement compiled once and executed with many parameter sets (executemany): building
    a multi-VALUES statement per batch spent most of a 10M-row sync compiling SQL.
    """
    if not rows:
        return
    ins = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.connection().execute(ins(table.__table__).on_conflict_do_nothing(), rows)  # type: ignore[attr-defined]


def upsert(s: Session, table: type, rows: list[dict[str, object]], keys: list[str], update: list[str]) -> None:
    """Bulk insert-or-update by primary key (executemany; a retried batch rewrites the same rows)."""
    if not rows:
        return
    ins = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = ins(table.__table__)  # type: ignore[attr-defined]
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})
    s.connection().execute(stmt, rows)


def stage_entries(
    s: Session, integration_id: str, generation: int, entries: Iterable[tuple[str, str]]
) -> None:
    rows = [
        {"integration_id": integration_id, "generation": generation, "value_hash": h, "value_enc": e}
        for h, e in entries
    ]
    insert_ignoring(s, SubscriberEntry, rows)


def stage_rejections(s: Session, sync_id: str, rejections: Iterable[tuple[int, str]]) -> None:
    insert_ignoring(
        s, SubscriberRejection, [{"sync_id": sync_id, "line": n, "reason": r[:200]} for n, r in rejections]
    )


def delete_generation_batch(s: Session, integration_id: str, generation: int, limit: int) -> int:
    """Delete up to `limit` entries of a generation that is not active; returns how many."""
    hashes = s.exec(
        select(SubscriberEntry.value_hash)
        .where(SubscriberEntry.integration_id == integration_id, SubscriberEntry.generation == generation)
        .limit(limit)
    ).all()
    if not hashes:
        return 0
    s.execute(
        delete(SubscriberEntry).where(
            SubscriberEntry.integration_id == integration_id,  # type: ignore[arg-type]
            SubscriberEntry.generation == generation,  # type: ignore[arg-type]
            col(SubscriberEntry.value_hash).in_(hashes),
        )
    )
    return len(hashes)


def stale_generations(s: Session, lst: SubscriberList) -> list[int]:
    """Generations of finished syncs that are not the active one (their entries can go)."""
    rows = s.exec(
        select(SubscriberSync.generation).where(
            SubscriberSync.integration_id == lst.integration_id, SubscriberSync.state != "running"
        )
    ).all()
    return sorted({g for g in rows if g != lst.active_generation})


def activate(s: Session, lst: SubscriberList, generation: int, folder: str, now: datetime) -> None:
    lst.active_generation = generation
    lst.activated_at = now
    lst.last_folder = folder
    s.add(lst)
