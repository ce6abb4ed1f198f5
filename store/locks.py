"""Per-key serialisation inside a transaction (cap reservations for one user; the identities an
ingestion request resolves, creates or merges)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import text
from sqlmodel import Session


def lock_key(session: Session, key: str) -> None:
    """Hold an exclusive lock on `key` until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: every transaction already holds
    the database write lock from its first statement (BEGIN IMMEDIATE), so nothing to do.
    """
    lock_keys(session, [key])


def lock_keys(session: Session, keys: Iterable[str]) -> None:
    """`lock_key` for several keys in one round trip. They are taken in one fixed order (of their
    lock ids), so two transactions locking overlapping sets wait for each other, never deadlock;
    a transaction must take all its locks of a kind in one call for that to hold."""
    if session.get_bind().dialect.name != "postgresql":
        return
    idents = sorted({_lock_id(k) for k in keys})
    if not idents:
        return
    calls = ", ".join(f"pg_advisory_xact_lock(:k{i})" for i in range(len(idents)))
    params = {f"k{i}": v for i, v in enumerate(idents)}
    session.exec(text(f"SELECT {calls}").bindparams(**params))  # type: ignore[call-overload]


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
