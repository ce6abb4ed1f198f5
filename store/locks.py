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


# The identity lock keys (PostgreSQL). Whatever writes a row of these kinds takes its key first, from
# these builders only: ingestion (`api.ingestion.identity_lock_keys`), the opt-in API
# (api/routes/userdata.py) and erasure (`store.erasure.person_lock_keys`). Two writers of one row
# under different keys do not wait for each other (a Web Push opt-in by event and by the API did).


def device_lock_key(section_id: str, device_key: str) -> str:
    """A device (`Device`, unique on section and device key)."""
    return f"id/{section_id}/device/{device_key}"


def cuid_lock_key(section_id: str, cuid: str) -> str:
    """The user holding a CUID (`User.cuid`)."""
    return f"id/{section_id}/cuid/{cuid}"


def identifier_lock_key(section_id: str, kind: str, value_hash: str) -> str:
    """An email or phone identifier (`UserIdentifier`, unique on section, kind and hash)."""
    return f"id/{section_id}/{kind}/{value_hash}"


def opt_in_lock_key(section_id: str, channel: str, value_hash: str) -> str:
    """An opt-in (`OptIn`, unique on section, channel and hash), and for a push channel also the
    push identifier of the same token (`UserIdentifier` of kind = channel, same hash): a Web Push
    subscription's is its endpoint's hash (`domain.hashing.push_token_hash`)."""
    return f"optin/{section_id}/{channel}/{value_hash}"


# The second tier (PostgreSQL): the users a request resolved, locked by ingestion after its identity
# keys, in a call of their own, and never before them (`api.ingestion._lock_users` says why that
# order cannot deadlock). Only ingestion takes these; no one takes an identity key after one.


def user_lock_key(section_id: str, user_id: str) -> str:
    """A user as ingestion writes them: their row, cart index entries, and at a merge the rows
    re-pointed to them. Two requests reaching one person through different devices (a login on one
    merging into them, an add-to-cart on another) share no identity key but this one."""
    return f"user/{section_id}/{user_id}"


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
