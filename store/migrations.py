"""Data migrations that run once per database, at the API's start.

Schema changes are made by `store/upgrade.py` and report data by `store/report_rollup.py`
(`migrate_reports`, in `Store`'s start-up). Migrations that need more than the store, such as
the secret box to read sealed values, run here from the API's start (`run_once`), which records
each one's name when it has run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Column
from sqlmodel import Field, Session, SQLModel

from store.locks import lock_key
from store.tables import UTCDateTime, now_utc

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
