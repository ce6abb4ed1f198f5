"""Subscriber-list reads and writes: the effective opt-in of an identifier, staging, switching.

Override rule (seeds): a synced list replaces every earlier opt-in and opt-out of the channel,
API-made ones included. Later API calls still apply on top. So for an integration with an
active list, an identifier is opted in when its latest API opt-in/out is newer than the list's
activation and says "in", or, failing such a newer API call, when the active list holds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import exists as sa_exists
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from domain.text import storable
from security.crypto import sealed_token
from store import set_copy
from store.set_copy import KEY_BYTES
from store.subscriber_tables import (
    SYNC_UNDER_WAY,
    SubscriberList,
    SubscriberRejection,
    SubscriberSync,
    set_table_name,
    subscriber_set,
)
from store.tables import OptIn

SET_NAME = re.compile(r"subscriber_set_[0-9a-f]{16}_[0-9]+")
FERNET_MARK = b"fernet:"  # value_enc of a list adopted from legacy rows (store/subscriber_legacy.py)


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
    entries = subscriber_set(set_table_name(lst.integration_id, lst.active_generation))
    # A set is keyed by the hash cut to KEY_BYTES, or (written before that) by the whole hash.
    full = {bytes.fromhex(h): h for h in rest}
    keys = {**full, **{digest[:KEY_BYTES]: h for digest, h in full.items()}}
    entry = s.connection().execute(
        sa_select(entries.c.value_hash, entries.c.value_enc).where(entries.c.value_hash.in_(list(keys))).limit(1)
    ).first()
    if entry is None:
        return None
    raw = bytes(entry.value_enc)
    # A list adopted from before set tables keeps its Fernet tokens (store/subscriber_legacy.py).
    value_enc = raw[len(FERNET_MARK) :].decode() if raw.startswith(FERNET_MARK) else sealed_token(raw)
    # Not stored: a view of the list entry in the shape delivery reads (value_enc, hash).
    return OptIn(
        section_id=section_id, channel=channel, identifier_type="list", value_hash=keys[bytes(entry.value_hash)],
        value_enc=value_enc, opted_in=True, source="list", updated_at=lst.activated_at,
    )  # fmt: skip


_IGNORING: dict[tuple[str, type], Any] = {}  # (dialect, table) -> INSERT ... ON CONFLICT DO NOTHING


def insert_ignoring(s: Session, table: type, rows: list[dict[str, object]]) -> None:
    """Bulk insert that ignores rows already there (a retried batch, a duplicate line).

    One statement compiled once and executed with many parameter sets (executemany): building
    a multi-VALUES statement per batch spent most of a 10M-row sync compiling SQL.
    """
    if not rows:
        return
    dialect_name = s.get_bind().dialect.name
    stmt = _IGNORING.get((dialect_name, table))
    if stmt is None:  # built once per table: ingestion indexes every new cart through here
        ins = pg_insert if dialect_name == "postgresql" else sqlite_insert
        stmt = _IGNORING[(dialect_name, table)] = ins(table.__table__).on_conflict_do_nothing()  # type: ignore[attr-defined]
    s.connection().execute(stmt, rows)


def upsert(s: Session, table: type, rows: list[dict[str, object]], keys: list[str], update: list[str]) -> None:
    """Bulk insert-or-update by primary key (executemany; a retried batch rewrites the same rows)."""
    if not rows:
        return
    ins = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = ins(table.__table__)  # type: ignore[attr-defined]
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})
    s.connection().execute(stmt, rows)


def _checked(name: str) -> str:
    """Set table names are spliced into SQL (COPY, DDL): only the shape `set_table_name` makes."""
    if not SET_NAME.fullmatch(name):
        raise ValueError(f"not a subscriber set table: {name!r}")
    return name


def create_set(s: Session, name: str) -> None:
    """The (empty, unindexed) table a sync loads; kept as is when a retried attempt resumes."""
    subscriber_set(name).create(s.connection(), checkfirst=True)


def write_set(s: Session, name: str, hashes: list[bytes], sealed: list[bytes], framed: list[bytes]) -> None:
    """Append rows to a set table in this transaction: binary COPY on PostgreSQL (`framed`: rows
    already in COPY format, `store.set_copy.copy_rows`), executemany on SQLite (`hashes`, `sealed`)."""
    if not hashes and not framed:
        return
    name = _checked(name)
    conn = s.connection()
    if conn.dialect.name != "postgresql":
        assert not framed, "COPY-framed rows are for PostgreSQL"
        conn.exec_driver_sql(f'INSERT INTO "{name}" (value_hash, value_enc) VALUES (?, ?)', list(zip(hashes, sealed)))
        return
    assert not hashes, "PostgreSQL rows come COPY-framed (activities/seal_pool.py: seal_slice)"
    data = b"".join([set_copy.HEADER, *framed, set_copy.TRAILER])
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(f'COPY "{name}" (value_hash, value_enc) FROM STDIN (FORMAT BINARY)') as copy:  # type: ignore[attr-defined]
        copy.write(data)


def index_set(s: Session, name: str) -> None:
    """Index a loaded set (once, after the load: far cheaper than per row) and give the planner its statistics."""
    index_set_on(s.connection(), name)


def index_set_on(conn: Connection, name: str) -> None:
    name = _checked(name)
    conn.exec_driver_sql(f'CREATE INDEX IF NOT EXISTS "{name}_hash" ON "{name}" (value_hash)')
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f'ANALYZE "{name}"')


def drop_set(s: Session, name: str) -> None:
    subscriber_set(name).drop(s.connection(), checkfirst=True)


def stage_rejections(s: Session, sync_id: str, rejections: Iterable[tuple[int, str]]) -> None:
    # A reason may quote the file (a CSV error): never a NUL into a text column.
    reasons = [{"sync_id": sync_id, "line": n, "reason": storable(r)[:200]} for n, r in rejections]
    insert_ignoring(s, SubscriberRejection, reasons)


def clear_rejections(s: Session, sync_id: str) -> None:
    """Forget a sync's rejected lines (its file is read again from the start)."""
    s.execute(sa_delete(SubscriberRejection).where(col(SubscriberRejection.sync_id) == sync_id))


def stale_generations(s: Session, lst: SubscriberList) -> list[int]:
    """Generations of finished syncs that are not the active one (their entries can go)."""
    rows = s.exec(
        select(SubscriberSync.generation).where(
            SubscriberSync.integration_id == lst.integration_id, col(SubscriberSync.state).not_in(SYNC_UNDER_WAY)
        )
    ).all()
    return sorted({g for g in rows if g != lst.active_generation})


def active_size(s: Session, lst: SubscriberList) -> int:
    """Rows (accepted lines) of the list's active set; 0 without one. The sync that loaded it counted
    them; a set without such a record (adopted from legacy rows) is counted."""
    if lst.active_generation is None:
        return 0
    loaded = s.exec(
        select(SubscriberSync.rows_accepted).where(
            SubscriberSync.integration_id == lst.integration_id,
            SubscriberSync.generation == lst.active_generation,
            SubscriberSync.state == "succeeded",
        )
    ).first()
    if loaded is not None:
        return loaded
    table = subscriber_set(set_table_name(lst.integration_id, lst.active_generation))
    return int(s.connection().execute(sa_select(func.count()).select_from(table)).scalar_one())


def removed_count(s: Session, lst: SubscriberList, new_set: str) -> int:
    """Rows of the list's active set whose identifier the set `new_set` (a loaded, indexed generation) does
    not hold: what applying it would remove. One anti-join counted in the database (PostgreSQL: a hash
    anti-join; SQLite: an index probe of `new_set` per row), never rows fetched into Python. The active
    set may hold whole 32-byte hashes (written before keys were cut to KEY_BYTES): compared by prefix."""
    if lst.active_generation is None:
        return 0
    old = subscriber_set(set_table_name(lst.integration_id, lst.active_generation))
    new = subscriber_set(_checked(new_set))
    listed = sa_exists().where(new.c.value_hash == func.substr(old.c.value_hash, 1, KEY_BYTES))
    return int(s.connection().execute(sa_select(func.count()).select_from(old).where(~listed)).scalar_one())


def force_refused(s: Session, lst: SubscriberList, now: datetime) -> list[str]:
    """Queue the list's refused folders (not superseded by a newer applied one) to sync again, applied
    whatever they remove: each is read again from its start by the next run. Returns their folders."""
    query = select(SubscriberSync).where(
        SubscriberSync.integration_id == lst.integration_id, SubscriberSync.state == "refused"
    )
    if lst.last_folder is not None:
        query = query.where(col(SubscriberSync.folder) > lst.last_folder)
    folders: list[str] = []
    for sync in s.exec(query.order_by(col(SubscriberSync.folder))).all():
        sync.state, sync.error, sync.started_at, sync.finished_at, sync.duration_ms = "forced", None, now, None, None
        sync.rows_accepted = sync.rows_rejected = sync.lines_read = sync.resume_offset = 0
        sync.source_etag = None
        clear_rejections(s, sync.id)
        s.add(sync)
        folders.append(sync.folder)
    return folders


def activate(s: Session, lst: SubscriberList, generation: int, folder: str, now: datetime) -> None:
    lst.active_generation = generation
    lst.activated_at = now
    lst.last_folder = folder
    s.add(lst)
