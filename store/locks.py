"""Per-key serialisation inside a transaction (cap reservations for one user)."""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlmodel import Session


def lock_key(session: Session, key: str) -> None:
    """Hold an exclusive lock on `key` until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: every transaction already holds
    the database write lock from its first statement (BEGIN IMMEDIATE), so nothing to do.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    ident = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    session.exec(text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=ident))  # type: ignore[call-overload]
