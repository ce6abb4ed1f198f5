"""Erasure of a person (GDPR art. 17): their personal data goes, pseudonymous report facts stay.

`DELETE /api/v1/users/{ref}` (api/routes/erasure.py) first ends the person's running journeys in
Temporal, then calls `erase`, which in one transaction:

- deletes what identifies or describes the person: the opt-ins of their identifiers (the
  encrypted email, phone or push token: `OptIn.value_hash` is the hash `UserIdentifier` holds),
  the identifiers, devices and aliases, their raw events, cart index entries, the built-in
  outbox's copies of their messages (recipient in clear), the messages kept (encrypted) for the
  retries of their unfinished sends, and their entries in the active generation of the section's
  subscriber lists;
- blanks the `User` rows (the person's and every id merged into them) to tombstones: no CUID,
  attributes, cart or locale, and `erased_at` set, so no later batched run lists them (their
  aliases are deleted: the merged ids would stand as users of their own) and a run that listed
  them skips them before counting them in the report. The rows are kept, not deleted, because a
  journey step or batched send already in flight resolves its user by id (activities/journey.py
  `decide_in` raises on a missing user, activities/delivery.py asserts one): a tombstone has no
  identifier, so such a step finds the person unreachable and sends nothing. Nothing links a
  tombstone to the person: with no device and no CUID left, their old dyid or CUID makes a new,
  unrelated user;
- keeps the facts reports count (journeys, sends, decisions, tracking hits, cohorts, counters,
  attributions), keyed by the random user id only. Two fields of them could lead back to the
  person through the shop's own systems and are blanked: the user agent of their tracking hits,
  and the order id (transaction id) of their attributed purchases, replaced by a salted hash that
  keeps the report's per-user order dedupe exact but matches no order.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Executable, delete, update
from sqlalchemy.engine import CursorResult
from sqlmodel import Session, col, select

from store import journey_rows
from store.cart_tables import CartEntry
from store.identity_tables import UserAlias
from store.locks import cuid_lock_key, device_lock_key, identifier_lock_key, lock_keys, opt_in_lock_key
from store.reachability import PUSH_CHANNELS
from store.report_tables import ReportAttribution
from store.set_copy import KEY_BYTES
from store.subscriber_tables import SubscriberList, set_table_name, subscriber_set
from store.tables import Device, Event, Journey, OptIn, OutboxMessage, Send, User, UserIdentifier
from store.tracking_tables import TrackingHit
from store.users import alias_ids, canonical_id, find_user

# The exit reason of the journeys an erasure ends, and the skip reason of a batched run's recipient
# erased after the run listed them (activities/broadcast.py `_prepare`).
ERASED = "erased"
# Attempts at locking a person whose devices or identifiers keep changing under the erasure
# (each round is one concurrent request adding one); then `PersonChanged`.
LOCK_ROUNDS = 5


class PersonChanged(Exception):
    """The person changed under the erasure, nothing was erased: they were merged into another user
    (who is now the one to erase, journeys included), or their identities changed on every locking
    round. The caller starts again from `find_person`."""


@dataclass(frozen=True)
class Person:
    """Who an erasure is about: the user, the ids merged into them, and their active journeys."""

    section_id: str
    user_id: str
    ids: list[str]  # user_id first, then its aliases
    workflow_ids: list[str]  # of their active journeys, each once


@dataclass
class Erased:
    """What one erasure removed or blanked, per kind of data (all zero for a person erased before)."""

    opt_ins: int = 0
    identifiers: int = 0
    devices: int = 0
    aliases: int = 0
    events: int = 0
    cart_entries: int = 0
    outbox_messages: int = 0
    subscriber_list_entries: int = 0
    tracking_hit_user_agents: int = 0
    attribution_order_ids: int = 0
    user_profiles: int = 0  # user rows (the person and their aliases) that held a CUID, attributes, cart or locale
    journeys_ended: int = 0  # active rows ended here: their workflow was gone when the exit was signalled

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def find_person(s: Session, section_id: str, ref: str) -> Person | None:
    """The person `ref` names (`store.users.find_user`: user id, alias, dyid or CUID), or None."""
    user = find_user(s, section_id, ref)
    if user is None:
        return None
    ids = [user.id, *alias_ids(s, user.id)]
    return Person(section_id, user.id, ids, _active_workflows(s, section_id, ids))


def _active_workflows(s: Session, section_id: str, ids: list[str]) -> list[str]:
    rows = s.exec(
        select(Journey.workflow_id).where(
            col(Journey.section_id) == section_id, col(Journey.user_id).in_(ids), col(Journey.status) == "active"
        )
    ).all()
    return sorted(set(rows))


def erase(s: Session, person: Person, gone_workflows: list[str], now: datetime) -> Erased:
    """Erase the person's personal data in this transaction (the module docstring says what goes).

    `gone_workflows`: workflow ids of their active journeys that had no running workflow to take
    the exit signal; those journeys' rows are ended here ("exited", reason "erased")."""
    ids = _lock_person(s, person)
    out = Erased()
    _erase_identity(s, person.section_id, person.user_id, ids, out)
    _erase_activity(s, person.section_id, ids, out)
    out.user_profiles = _blank_users(s, ids, now)
    for workflow_id in gone_workflows:
        out.journeys_ended += _end_rows(s, person.section_id, ids, workflow_id, now)
    return out


def _lock_person(s: Session, person: Person) -> list[str]:
    """Take the identity locks of everything that leads to the person (PostgreSQL), and return their
    ids as read under them.

    The locks are ingestion's (`person_lock_keys`): a request of the person then either completed
    before (its events, cart and identifiers are read here and erased) or waits for the commit and
    finds no one (a new user). Without them, a request accepted meanwhile left its event and cart
    under the tombstone, or linked identifiers to it. What to lock is read first without the locks,
    then again under them: a device or identifier added in between (a login on a new device) means
    starting again with the larger set, all in one `lock_keys` call (its fixed order: no deadlock
    with ingestion, which takes its locks in one call too). The user row is locked as well: a
    request that resolved the person before the locks were taken updates it, so it finishes first."""
    held: set[str] | None = None
    for _ in range(LOCK_ROUNDS):
        ids = list(dict.fromkeys([person.user_id, *alias_ids(s, person.user_id), *person.ids]))
        wanted = person_lock_keys(s, person.section_id, ids)
        if held is not None and wanted <= held:
            if canonical_id(s, person.user_id) != person.user_id:
                # A login merged the person into another user meanwhile: their rows are that user's now.
                raise PersonChanged(person.user_id)
            return ids
        if held is not None:
            s.rollback()  # releases what is held: the larger set is taken in one call again
        held = wanted | (held or set())
        lock_keys(s, held)
        s.exec(select(User.id).where(col(User.id) == person.user_id).with_for_update())
    raise PersonChanged(person.user_id)


def person_lock_keys(s: Session, section_id: str, ids: list[str]) -> set[str]:
    """The lock keys ingestion and the opt-in API take for what leads to the users `ids`: their
    devices, CUIDs, email and phone identifiers, push tokens, and the opt-ins of their identifiers
    (`store.locks`)."""
    devices = s.exec(
        select(Device.device_key).where(col(Device.section_id) == section_id, col(Device.user_id).in_(ids))
    ).all()
    cuids = s.exec(select(User.cuid).where(col(User.id).in_(ids), col(User.cuid).isnot(None))).all()
    identifiers = s.exec(
        select(UserIdentifier.kind, UserIdentifier.value_hash).where(
            col(UserIdentifier.section_id) == section_id, col(UserIdentifier.user_id).in_(ids)
        )
    ).all()
    hashes = sorted({h for _, h in identifiers})
    opt_ins = s.exec(
        select(OptIn.channel, OptIn.value_hash).where(
            col(OptIn.section_id) == section_id, col(OptIn.value_hash).in_(hashes)
        )
    ).all() if hashes else []  # fmt: skip
    keys = {device_lock_key(section_id, d) for d in devices}
    keys |= {cuid_lock_key(section_id, c) for c in cuids if c is not None}
    keys |= {identifier_lock_key(section_id, k, h) for k, h in identifiers if k in ("email", "phone")}
    keys |= {opt_in_lock_key(section_id, k, h) for k, h in identifiers if k in PUSH_CHANNELS}
    keys |= {opt_in_lock_key(section_id, channel, h) for channel, h in opt_ins}
    return keys


def _erase_identity(s: Session, sec: str, user_id: str, ids: list[str], out: Erased) -> None:
    """What names the person: opt-ins and list entries of their identifiers, identifiers, devices, aliases."""
    hashes = _identifier_hashes(s, sec, ids)
    if hashes:
        out.opt_ins = _count(s, delete(OptIn).where(col(OptIn.section_id) == sec, col(OptIn.value_hash).in_(hashes)))
        out.subscriber_list_entries = _erase_from_lists(s, sec, hashes)
    out.identifiers = _delete_by_user(s, UserIdentifier, sec, ids)
    out.devices = _delete_by_user(s, Device, sec, ids)
    out.aliases = _count(s, delete(UserAlias).where(col(UserAlias.canonical_id) == user_id))


def _erase_activity(s: Session, sec: str, ids: list[str], out: Erased) -> None:
    """What they did and were sent: raw events, cart index, outbox copies; blanked in report facts."""
    out.events = _delete_by_user(s, Event, sec, ids)
    cart = delete(CartEntry).where(col(CartEntry.section_id) == sec, col(CartEntry.user_id).in_(ids))
    out.cart_entries = _count(s, cart)
    their_sends = select(Send.key).where(col(Send.section_id) == sec, col(Send.user_id).in_(ids))
    outbox = delete(OutboxMessage).where(
        col(OutboxMessage.section_id) == sec, col(OutboxMessage.send_key).in_(their_sends)
    )
    out.outbox_messages = _count(s, outbox)
    # The messages kept for the retries of their unfinished sends (addresses, rendered content):
    # such a retry then finds no message and no opt-in, and sends nothing.
    kept = update(Send).where(
        col(Send.section_id) == sec, col(Send.user_id).in_(ids), col(Send.message_enc).isnot(None)
    )
    s.execute(kept.values(message_enc=None))
    hits = update(TrackingHit).where(
        col(TrackingHit.section_id) == sec, col(TrackingHit.user_id).in_(ids), col(TrackingHit.user_agent).isnot(None)
    )
    out.tracking_hit_user_agents = _count(s, hits.values(user_agent=None))
    out.attribution_order_ids = _pseudonymise_orders(s, ids)


def _identifier_hashes(s: Session, section_id: str, ids: list[str]) -> list[str]:
    """The hashes of the person's identifiers (email, phone, custom id, push tokens): what their
    opt-ins and subscriber-list entries are keyed by."""
    rows = s.exec(
        select(UserIdentifier.value_hash).where(
            col(UserIdentifier.section_id) == section_id, col(UserIdentifier.user_id).in_(ids)
        )
    ).all()
    return sorted(set(rows))


def _delete_by_user(
    s: Session, table: type[Device] | type[UserIdentifier] | type[Event], sec: str, ids: list[str]
) -> int:
    return _count(s, delete(table).where(col(table.section_id) == sec, col(table.user_id).in_(ids)))


def _count(s: Session, statement: Executable) -> int:
    result = s.execute(statement)
    assert isinstance(result, CursorResult)
    return int(result.rowcount or 0)


def _erase_from_lists(s: Session, section_id: str, hashes: list[str]) -> int:
    """Delete the identifiers from the active set of each subscriber list of the section: a keyed
    delete by the set's key (the hash cut to KEY_BYTES, or whole in sets written before). A sync
    under way loads a new set from the shop's file and brings them back if the file still has them."""
    digests = [bytes.fromhex(h) for h in hashes if _is_sha256_hex(h)]
    keys = [*digests, *(d[:KEY_BYTES] for d in digests)]
    if not keys:
        return 0
    lists = s.exec(
        select(SubscriberList).where(
            col(SubscriberList.section_id) == section_id, col(SubscriberList.active_generation).isnot(None)
        )
    ).all()
    removed = 0
    for lst in lists:
        assert lst.active_generation is not None
        entries = subscriber_set(set_table_name(lst.integration_id, lst.active_generation))
        removed += _count(s, entries.delete().where(entries.c.value_hash.in_(keys)))
    return removed


def _is_sha256_hex(value: str) -> bool:
    try:
        return len(bytes.fromhex(value)) == 32
    except ValueError:
        return False


def _pseudonymise_orders(s: Session, ids: list[str]) -> int:
    """Replace the order ids of the person's attributed purchases with a hash salted for this erasure
    only: the report's dedupe (same user, same order id) still counts each order once, and no order
    id of the shop matches it any more."""
    salt = secrets.token_bytes(16)
    rows = s.exec(
        select(ReportAttribution).where(
            col(ReportAttribution.user_id).in_(ids),
            col(ReportAttribution.transaction_id).isnot(None),
            ~col(ReportAttribution.transaction_id).startswith(f"{ERASED}:"),
        )
    ).all()
    for row in rows:
        assert row.transaction_id is not None
        digest = hashlib.sha256(salt + row.transaction_id.encode()).hexdigest()[:32]
        row.transaction_id = f"{ERASED}:{digest}"
        s.add(row)
    return len(rows)


def _blank_users(s: Session, ids: list[str], now: datetime) -> int:
    """Blank every personal field of the user rows and mark them erased: they stay as tombstones (see
    the module docstring). A tombstone erased again keeps the time of its first erasure."""
    users = s.exec(select(User).where(col(User.id).in_(ids))).all()
    blanked = 0
    for user in users:
        if user.cuid is not None or user.attributes or user.cart or user.locale is not None:
            blanked += 1
        user.cuid = user.cuid_type = user.locale = None
        user.attributes, user.cart = {}, []
        user.updated_at = now
        user.erased_at = user.erased_at or now
        s.add(user)
    return blanked


def _end_rows(s: Session, section_id: str, ids: list[str], workflow_id: str, now: datetime) -> int:
    """End the person's active rows of a workflow that is gone (closed, or never started)."""
    journey_ids = s.exec(
        select(Journey.id).where(
            col(Journey.section_id) == section_id, col(Journey.user_id).in_(ids),
            col(Journey.workflow_id) == workflow_id, col(Journey.status) == "active",
        )
    ).all()  # fmt: skip
    return sum(journey_rows.end_if_active(s, journey_id, "exited", ERASED, now) for journey_id in journey_ids)
