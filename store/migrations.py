"""Data migrations that run once per database, at the API's start.

Schema changes are made by `store/upgrade.py` and report data by `store/report_rollup.py`
(`migrate_reports`, in `Store`'s start-up). Migrations that need more than the store, such as
the secret box to read sealed values, or that fill a column added since (`mark_erased_users`),
run here from the API's start (`run_once`), which records each one's name when it has run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Column, exists
from sqlmodel import Field, Session, SQLModel, col, select

from store.identity_tables import UserAlias
from store.locks import lock_key
from store.tables import Device, User, UserIdentifier, UTCDateTime, now_utc

log = logging.getLogger(__name__)


class DataMigration(SQLModel, table=True):
    """A data migration that has run on this database (no row: not yet)."""

    __tablename__ = "data_migration"

    name: str = Field(primary_key=True, max_length=64)
    ran_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


def run_once(s: Session, name: str, migrate: Callable[[Session], int]) -> bool:
    """Run `migrate` in this transaction unless it has run on this database; True if it ran.

    Processes starting together take turns (PostgreSQL: a lock on the name; SQLite: the write
    lock), and the second finds the first's record. `migrate` returns how many rows it changed."""
    lock_key(s, f"data-migration/{name}")
    if s.get(DataMigration, name) is not None:
        return False
    changed = migrate(s)
    s.add(DataMigration(name=name, ran_at=now_utc()))
    s.commit()
    log.info("data migration %s: %d rows changed", name, changed)
    return True


def mark_erased_users(s: Session, *, section_id: str | None = None) -> int:
    """Mark the tombstones of erasures made before `User.erased_at` existed (erased at their last
    update, which the erasure set), so that batched runs no longer list them. Returns how many.

    A tombstone is told apart by what an erasure leaves: no CUID, attributes, cart or locale, no
    device, no identifier, and no alias of anyone (an erasure deletes the aliases of the ids merged
    into the person, so those stand alone too). No live user looks so: an anonymous visitor holds
    their device, an identified one their CUID, and a merged id is an alias. One pass over the users
    without a CUID, each probed on the indexed device, identifier and alias keys. `section_id`: only
    that section's (all by default)."""
    query = select(User).where(
        col(User.erased_at).is_(None), col(User.cuid).is_(None), col(User.locale).is_(None),
        ~exists().where(col(Device.user_id) == col(User.id)),
        ~exists().where(col(UserIdentifier.user_id) == col(User.id)),
        ~exists().where(col(UserAlias.alias_id) == col(User.id)),
    )  # fmt: skip
    if section_id is not None:
        query = query.where(col(User.section_id) == section_id)
    marked = 0
    for user in s.exec(query).all():
        if user.attributes or user.cart:  # JSON columns: compared here, not in SQL (no json = on PostgreSQL)
            continue
        user.erased_at = user.updated_at
        s.add(user)
        marked += 1
    s.flush()
    return marked
