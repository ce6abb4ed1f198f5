"""Users: resolving the device id of an event to a user, identification, cart state.

A device (`dyid`) belongs to one user; a differing `dyid_server` of the same request is linked to
that user as a second device (`resolve_linked_devices`). An identification event gives the user a CUID; when
another user already holds that CUID (the same person on another device), the device's user is
merged into that owner (`merge_users`): devices, identifiers, events (also those from before
identification), journeys, cap reservations, sends, tracking hits and decisions are re-pointed to the owner,
and the merged id is kept as an alias (`UserAlias`) because journeys already running carry it.
Everything that reads a user by id resolves aliases first (`canonical_user`).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, String, bindparam, cast, exists, func, insert, null, union_all, update
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session, col, select

from domain.events import CART_KINDS, CartItem, EventKind, Identity, NormalizedEvent, sha256_hex
from store import cart_index, report_rollup
from store.identity_tables import UserAlias
from store.statements import row_of, table_of
from store.tables import CapReservation, Decision, Device, Event, Journey, Send, User, UserIdentifier
from store.tracking_tables import TrackingHit

# Plain tables for the INSERTs of a first visit (Core statements skip the ORM's bulk-insert layer).
USER_TABLE = table_of(User)
DEVICE_TABLE = table_of(Device)
_INSERT_USER = insert(USER_TABLE)
_INSERT_DEVICE = insert(DEVICE_TABLE)

# Tables whose rows belong to a user by `user_id`: re-pointed when that user is merged away.
# Tracking hits too: report counters and attribution read a person's clicks by their id. Short
# links are not: their `user_id` is the recipient the link was minted for, like the `u` of a
# signed token (which cannot be rewritten); a hit accepts it as an alias of the send's user.
_USER_ROWS = (Device, UserIdentifier, Event, Journey, CapReservation, Send, Decision, TrackingHit)


# A request's device keys: one (the usual case), or the differing `dyid_server` and `dyid` of one
# browser (`resolve_linked_devices`); written, moved and merged together.
DeviceKeys = str | tuple[str, ...] | None


def device_keys(device_key: DeviceKeys) -> tuple[str, ...]:
    if isinstance(device_key, str):
        return (device_key,) if device_key else ()  # an empty id is no device
    return device_key or ()


def new_user_id() -> str:
    return "usr_" + secrets.token_hex(10)


# The device, its user and any alias of that user, in one round trip; built once (hot path).
_BY_DEVICE = (
    select(Device.user_id, User, UserAlias.canonical_id)
    .outerjoin(User, col(User.id) == Device.user_id)
    .outerjoin(UserAlias, col(UserAlias.alias_id) == Device.user_id)
    .where(Device.section_id == bindparam("section_id"), Device.device_key == bindparam("device_key"))
)


def resolve_user(
    s: Session, section_id: str, *, device_key: str | None, cuid: str | None, now: datetime
) -> tuple[User, bool]:
    """The user an event belongs to, and whether that user is new.

    A new user is returned *unsaved* (not in the session): ingestion applies the request's
    events to it first and then writes it once, complete (`save_new_user`), instead of an
    INSERT followed by an UPDATE of the same row on every first visit.

    `cuid` is the request's own CUID, already normalised (`domain.events.user_identity`). A new
    user is returned without it: the caller gives it with `identify`, which also links the
    identifiers (the hashed email an opt-in is found by) that a bare CUID here would lack.
    """
    found, user = _device_holder(s, section_id, device_key) if device_key else (False, None)
    if user is not None:
        return user, False
    return _by_cuid_or_new(s, section_id, device_key, cuid, now, dangling=found)


def _by_cuid_or_new(
    s: Session, section_id: str, device_key: DeviceKeys, cuid: str | None, now: datetime, *, dangling: bool
) -> tuple[User, bool]:
    """A request whose device key(s) name no user: the user holding its CUID, the device moved to
    them, else a new user (unsaved, as `resolve_user` says). `dangling`: a device row whose user
    row is gone exists, so the new user is written now and the device moved to it."""
    user = by_cuid(s, section_id, cuid) if cuid else None
    if user is not None:
        _move_device(s, section_id, device_key, user.id)
        return user, False
    # Every field given: pydantic inspects a default factory's signature on each use (measurable here).
    user = User(id=new_user_id(), section_id=section_id, attributes={}, cart=[], created_at=now, updated_at=now)
    if dangling:  # rare: write the user now and move the device to it
        s.add(user)
        s.flush()
        _move_device(s, section_id, device_key, user.id)
        return user, False
    return user, True


def resolve_linked_devices(
    s: Session, section_id: str, keys: tuple[str, str], *, cuid: str | None, now: datetime
) -> tuple[User, bool, tuple[str, ...]]:
    """`resolve_user` for a request bringing two differing keys of one browser: `dyid_server`, then
    `dyid` (`UserIn.differing_device_keys`). Returns the user, whether it is new (unsaved, as there),
    and the keys that are that user's devices now (what `save_new_user` and `identify` then write).

    The request is the user's whom a key already names, the server cookie's first (it outlives a
    reset script cookie); a key no one holds becomes a device of that user too, so the person is
    found by either afterwards. A key another user holds stays theirs (not stolen: it may be a
    shared device's other person); the request just does not go to them. Rare: costs a lookup per key.
    """
    holders = {key: _device_holder(s, section_id, key) for key in keys}
    owner = next((user for _, user in holders.values() if user is not None), None)
    if owner is not None:
        free = [key for key, (_, user) in holders.items() if user is None]  # unknown, or its user is gone
        _move_device(s, section_id, tuple(free), owner.id)
        return owner, False, tuple(k for k, (_, user) in holders.items() if user is None or user.id == owner.id)
    user, new = _by_cuid_or_new(s, section_id, keys, cuid, now, dangling=any(found for found, _ in holders.values()))
    return user, new, keys


def _device_holder(s: Session, section_id: str, device_key: str) -> tuple[bool, User | None]:
    """Whether a device row exists for the key, and the (canonical) user holding it, if that user exists."""
    row = s.exec(_BY_DEVICE, params={"section_id": section_id, "device_key": device_key}).first()
    if row is None:
        return False, None
    _, known, canonical = row
    return True, s.get(User, canonical) if canonical is not None else known


def person_ids(s: Session, section_id: str, device_key: DeviceKeys, cuids: list[str]) -> set[str]:
    """The ids of the users a request's device key(s) and CUIDs name now: each device's user (and
    the person it stands for when that id was merged away) and each CUID's holder. Ids only, in one
    round trip, no `User` loaded into the session: ingestion reads them to lock those users
    (`api.ingestion._lock_users`), and the rows are then read fresh under the locks."""
    keys = device_keys(device_key)
    parts: list[Any] = []  # SELECTs of (id, canonical id or NULL)
    if keys:
        parts.append(
            select(col(Device.user_id).label("id"), col(UserAlias.canonical_id).label("canonical"))
            .outerjoin(UserAlias, col(UserAlias.alias_id) == col(Device.user_id))
            .where(col(Device.section_id) == section_id, col(Device.device_key).in_(keys))
        )
    if cuids:
        parts.append(
            select(col(User.id).label("id"), cast(null(), String).label("canonical")).where(
                col(User.section_id) == section_id, col(User.cuid).in_(sorted(set(cuids)))
            )
        )
    if not parts:
        return set()
    statement: Executable = parts[0] if len(parts) == 1 else union_all(*parts)
    return {str(i) for row in s.connection().execute(statement) for i in row if i is not None}


def save_new_user(s: Session, user: User, device_key: DeviceKeys) -> None:
    """Write a user from `resolve_user(...)` that was new, then its device(s) (which reference it).

    Plain INSERTs (this runs for every first visit: the ORM's unit of work cost more than the
    statements); the object then joins the session as a loaded row, so later changes to it in
    this transaction are ordinary UPDATEs.
    """
    s.connection().execute(_INSERT_USER, row_of(user))
    make_transient_to_detached(user)
    s.add(user)
    rows = [{"section_id": user.section_id, "device_key": key, "user_id": user.id} for key in device_keys(device_key)]
    if rows:  # `resolve_user` found no such device: no lookup needed
        s.connection().execute(_INSERT_DEVICE, rows[0] if len(rows) == 1 else rows)


def by_cuid(s: Session, section_id: str, cuid: str) -> User | None:
    return s.exec(select(User).where(User.section_id == section_id, User.cuid == cuid)).first()


_ALIAS_OF = select(UserAlias.canonical_id).where(UserAlias.alias_id == bindparam("user_id"))


def canonical_id(s: Session, user_id: str) -> str:
    """The id a (possibly merged-away) user id stands for today."""
    # A plain statement built once: `Session.get` misses (no alias is the usual case) paid the
    # ORM's whole load path, a visible share of every journey's enrollment.
    canonical: str | None = s.connection().execute(_ALIAS_OF, {"user_id": user_id}).scalar()
    return canonical if canonical is not None else user_id


# The user an id stands for, alias resolved in the same statement (one round trip instead of
# two lookups; journeys and deliveries resolve their user on every step).
_CANONICAL_USER = select(User).where(
    User.id
    == func.coalesce(
        select(UserAlias.canonical_id).where(UserAlias.alias_id == bindparam("user_id")).scalar_subquery(),
        bindparam("user_id"),
    )
)


def canonical_user(s: Session, user_id: str) -> User | None:
    return s.exec(_CANONICAL_USER, params={"user_id": user_id}).first()


def unmerged_users(s: Session, user_ids: list[str]) -> dict[str, User]:
    """The users of these ids that were not merged into another (`canonical_user` of each is itself),
    by id, in one read: a batch's recipients. An id merged away, deleted or erased is left out (the
    one-recipient path skips an erased one, as the chunk's caller then does: activities/broadcast.py)."""
    merged = exists().where(col(UserAlias.alias_id) == col(User.id))
    live = (col(User.id).in_(user_ids), ~merged, col(User.erased_at).is_(None))
    return {u.id: u for u in s.exec(select(User).where(*live)).all()}


def alias_ids(s: Session, user_id: str) -> list[str]:
    """Ids merged into this user (their journeys may still run under the old id)."""
    return list(s.exec(select(UserAlias.alias_id).where(UserAlias.canonical_id == user_id)).all())


class AmbiguousUserRef(LookupError):
    """A ref (not a Rejoin user id) that is the device id of one user and the CUID of another.

    An API-only shop's `user.id` is a device-level id (as a dyid is), which may equal the CUID another
    person logged in with (`cust-9335603`): answering either person would read, flag or erase the
    wrong one (an erasure of the other person is irreversible). The operator repeats the request
    with the Rejoin id (`usr_...`) of the one meant; the message names both."""

    def __init__(self, device_user_id: str, cuid_user_id: str) -> None:
        super().__init__(
            f"this ref is the device id of user {device_user_id} and the CUID of user {cuid_user_id}: "
            "repeat the request with the Rejoin user id of the one you mean"
        )
        self.device_user_id = device_user_id
        self.cuid_user_id = cuid_user_id


def find_user(s: Session, section_id: str, ref: str) -> User | None:
    """Look a user up by Rejoin id (merged ids too), device id or CUID (what an operator has at hand).

    A Rejoin id is unambiguous and wins. Otherwise a ref naming a device of one user and the CUID of
    another raises `AmbiguousUserRef` (the API's 409) rather than picking either."""
    user = canonical_user(s, ref)
    if user is not None and user.section_id == section_id:
        return user
    device = s.get(Device, (section_id, ref))
    by_device = canonical_user(s, device.user_id) if device is not None else None
    holder = by_cuid(s, section_id, ref)
    if by_device is not None and holder is not None and by_device.id != holder.id:
        raise AmbiguousUserRef(by_device.id, holder.id)
    return by_device if by_device is not None else holder


def add_identifier(s: Session, section_id: str, user_id: str, kind: str, value_hash: str) -> None:
    s.merge(UserIdentifier(section_id=section_id, kind=kind, value_hash=value_hash, user_id=user_id))


def identify(s: Session, user: User, identity: Identity, device_key: DeviceKeys, now: datetime) -> User:
    """Attach a CUID; merge into the user who already has it. Returns the user to continue with."""
    owner = by_cuid(s, user.section_id, identity.cuid)
    if owner is not None and owner.id != user.id and folds_into_owner(user, identity):
        merge_users(s, merged=user, into=owner, now=now)
        user = owner
    elif owner is not None and owner.id != user.id:
        # The device's user is another known person (shared device, account switch): the device
        # changes hands; the previous person keeps their history.
        _move_device(s, user.section_id, device_key, owner.id)
        user = owner
    elif user.cuid is not None and user.cuid != identity.cuid and not _known_as(s, user, identity):
        # A person not seen before logs in on a device that belongs to someone else: a new user for
        # them. Renaming the device's user would hand the previous person's identifiers, cart and
        # journeys (and so their messages) to the newcomer, and lose the previous person's CUID.
        user = _new_person(s, user.section_id, identity, device_key, now)
    else:
        user.cuid, user.cuid_type = identity.cuid, identity.cuid_type
    for kind, value_hash in _identifiers(identity):
        add_identifier(s, user.section_id, user.id, kind, value_hash)
    user.updated_at = now
    s.add(user)
    return user


def folds_into_owner(user: User, identity: Identity) -> bool:
    """Whether `identify` merges `user` into another user holding `identity`'s CUID (when one does):
    the user has no CUID yet (an anonymous device user) or that one. A user known under another CUID
    is another person: the device changes hands instead, and nothing of theirs goes to the owner."""
    return user.cuid in (None, identity.cuid)


def _identifiers(identity: Identity) -> list[tuple[str, str]]:
    """The (kind, hash) identifiers an identification gives its user: the hashed email, the phone,
    and the CUID itself unless it is the hashed email."""
    found = [("email", identity.email_hash)] if identity.email_hash else []
    if identity.phone_hash:
        found.append(("phone", identity.phone_hash))
    if identity.cuid_type != "he":
        found.append(("custom", sha256_hex(identity.cuid)))
    return found


def _known_as(s: Session, user: User, identity: Identity) -> bool:
    """Whether `user` already holds an email or custom identifier of `identity`: the same person
    under another CUID (e.g. their hashed email after an external id), not a newcomer on their
    device. A phone does not count: a shared device's household may share one."""
    for kind, value_hash in _identifiers(identity):
        held = s.get(UserIdentifier, (user.section_id, kind, value_hash)) if kind != "phone" else None
        if held is not None and held.user_id == user.id:
            return True
    return False


def _move_device(s: Session, section_id: str, device_key: DeviceKeys, user_id: str) -> None:
    for key in device_keys(device_key):
        s.merge(Device(section_id=section_id, device_key=key, user_id=user_id))


def _new_person(s: Session, section_id: str, identity: Identity, device_key: DeviceKeys, now: datetime) -> User:
    """A user holding `identity`'s CUID and nothing else, written now (identifiers reference it),
    with the device moved to it."""
    user = User(
        id=new_user_id(), section_id=section_id, cuid=identity.cuid, cuid_type=identity.cuid_type,
        attributes={}, cart=[], created_at=now, updated_at=now,
    )  # fmt: skip
    s.add(user)
    s.flush()
    _move_device(s, section_id, device_key, user.id)
    return user


def merge_users(s: Session, *, merged: User, into: User, now: datetime) -> None:
    """Fold `merged` (an anonymous device user) into `into` (the CUID's owner), in this transaction.

    The person keeps the cart that changed last (`_merged_cart_is_newer`); attributes the owner
    lacks are kept. Rows are re-pointed with set-based updates (a user has few rows; no per-row
    loading). Aliases of `merged` are flattened to point at `into`.
    """
    s.flush()
    if _merged_cart_is_newer(s, merged, into):
        into.cart = merged.cart
    into.attributes = {**merged.attributes, **into.attributes}
    into.locale = into.locale or merged.locale
    into.is_test = into.is_test or merged.is_test
    # Report counters are per user: take both users out, re-point, count the merged person again.
    campaigns = report_rollup.forget_users(s, [merged.id, into.id])
    for table in _USER_ROWS:
        # The section too: the indexes on (section_id, user_id, ...) of hits and events then serve it.
        mine = (col(table.section_id) == merged.section_id) & (col(table.user_id) == merged.id)
        s.execute(update(table).where(mine).values(user_id=into.id))
    report_rollup.recount_users(s, [into.id], campaigns)
    s.execute(update(UserAlias).where(UserAlias.canonical_id == merged.id).values(canonical_id=into.id))  # type: ignore[arg-type]
    s.merge(UserAlias(alias_id=merged.id, section_id=merged.section_id, canonical_id=into.id, merged_at=now))
    merged.cart = []
    merged.updated_at = now
    s.add(merged)
    s.add(into)
    s.flush()
    cart_index.reindex(s, merged)  # an alias holds no cart: its entries go
    cart_index.reindex(s, into)


# Event kinds that change a cart (`apply_cart`): a purchase empties it.
_CART_CHANGES = sorted(k.value for k in CART_KINDS | {EventKind.PURCHASE})
# When each of the given users' carts last changed: their latest cart event (ix_event_user_time).
_LAST_CART_CHANGE = (
    select(Event.user_id, func.max(Event.received_at))
    .where(
        Event.section_id == bindparam("section_id"),
        col(Event.user_id).in_(bindparam("user_ids", expanding=True)),
        col(Event.kind).in_(_CART_CHANGES),
    )
    .group_by(col(Event.user_id))
)


def _merged_cart_is_newer(s: Session, merged: User, into: User) -> bool:
    """Whether the merged device's cart replaces the person's: the cart that changed last wins.

    Either may be the newer: the person may have carted on another device after this one carted
    anonymously (the person's cart then stays), or this device may be the one they shop on now.
    The time is the user's latest cart event, read before the merge re-points events. A user with
    none (never carted, or retention purged them) changed their cart earlier than one with some.
    Neither with any: the device's cart when it has items, as before these times were compared.
    """
    params = {"section_id": merged.section_id, "user_ids": [merged.id, into.id]}
    changed: dict[str, datetime] = dict(s.exec(_LAST_CART_CHANGE, params=params).all())
    merged_at, into_at = changed.get(merged.id), changed.get(into.id)
    if merged_at is None and into_at is None:
        return bool(merged.cart)
    return into_at is None or (merged_at is not None and merged_at >= into_at)


def apply_cart(user: User, event: NormalizedEvent) -> list[CartItem]:
    """Update the user's cart from a cart or purchase event; returns the cart after the event."""
    cart = [CartItem.model_validate(i) for i in user.cart]
    if event.kind == EventKind.PURCHASE:
        cart = []
    elif event.kind in CART_KINDS:
        if event.cart is not None:
            # Items at quantity 0 are not in the cart (as a remove-from-cart leaves them): an all-zero
            # cart is an empty one, which triggers nothing and exits cart journeys.
            cart = [i for i in event.cart if i.quantity > 0]
        elif event.kind == EventKind.ADD_TO_CART and event.sku:
            qty = float(event.properties.get("quantity", 1))
            existing = next((i for i in cart if i.sku == event.sku), None)
            if qty <= 0:
                pass  # adding none of a product leaves the cart as it was
            elif existing is not None:
                existing.quantity += qty
            else:
                cart.append(CartItem(productId=event.sku, quantity=qty))
        elif event.kind == EventKind.REMOVE_FROM_CART and event.sku:
            qty = float(event.properties.get("quantity") or 0)
            kept: list[CartItem] = []
            for item in cart:
                if item.sku == event.sku:
                    item.quantity -= qty if qty > 0 else item.quantity
                if item.quantity > 0:
                    kept.append(item)
            cart = kept
    user.cart = [i.model_dump(mode="json", exclude_none=True) for i in cart]
    return cart
