"""Can a user be reached on a channel? Integration, identifier of its type, and opt-in.

Users carry hashed identifiers (`UserIdentifier`); opt-ins carry the plain value encrypted and
its hash. A channel is reachable when the section has an integration for it, the user has an
identifier of the integration's type, and that identifier is opted in on the channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from domain.hashing import web_push_key
from security.crypto import UndecryptableSecret
from store.subscriber_tables import SubscriberList
from store.subscribers import effective_opt_in
from store.tables import Integration, OptIn, UserIdentifier, now_utc

# Identifier kinds stored per user, by the integration identifier type that reads them.
KIND_FOR_IDENTIFIER_TYPE = {"email": "email", "phone": "phone", "phoneNumber": "phone", "custom": "custom"}
PUSH_CHANNELS = {"app_push", "web_push"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reach:
    integrations: dict[str, Integration]
    unreachable: dict[str, str]  # channel -> reason
    opt_ins: dict[str, OptIn]  # channel -> the opt-in row that makes it reachable


def identifier_kind(channel: str, identifier_type: str) -> str:
    if channel in PUSH_CHANNELS:
        return channel  # push tokens are per channel
    return KIND_FOR_IDENTIFIER_TYPE.get(identifier_type, identifier_type)


# Prepared once: reach runs twice per journey step (decide, deliver), and building these per
# call cost more CPU than running them (docs/performance.md).
_INTEGRATIONS = select(Integration).where(
    col(Integration.section_id) == bindparam("section_id"), col(Integration.channel).in_(bindparam("channels", expanding=True))
)
_IDENTIFIERS = select(col(UserIdentifier.kind), col(UserIdentifier.value_hash)).where(
    col(UserIdentifier.section_id) == bindparam("section_id"), col(UserIdentifier.user_id) == bindparam("user_id")
)
_OPTED_IN = select(OptIn).where(
    col(OptIn.section_id) == bindparam("section_id"),
    col(OptIn.channel) == bindparam("channel"),
    col(OptIn.value_hash).in_(bindparam("hashes", expanding=True)),
    col(OptIn.opted_in) == True,  # noqa: E712  (SQL expression)
)
_LIST_GENERATION = select(col(SubscriberList.active_generation)).where(
    col(SubscriberList.integration_id) == bindparam("integration_id")
)


def _active_list(session: Session, integration_id: str) -> SubscriberList | None:
    """The integration's synced subscriber list if one is active (most have none: one cheap read)."""
    if session.execute(_LIST_GENERATION, {"integration_id": integration_id}).scalar_one_or_none() is None:
        return None
    lst = session.get(SubscriberList, integration_id)
    return lst if lst is not None and lst.active_generation is not None else None


def integrations_of(session: Session, section_id: str, channels: Iterable[str]) -> dict[str, Integration]:
    """The section's integrations of these channels, by channel (one per channel)."""
    wanted = list(dict.fromkeys(channels))
    return {
        i.channel: i
        for i in session.execute(_INTEGRATIONS, {"section_id": section_id, "channels": wanted}).scalars().all()
    }


def reach(session: Session, section_id: str, user_id: str, channels: Iterable[str]) -> Reach:
    wanted = list(dict.fromkeys(channels))
    return reach_with(session, section_id, user_id, wanted, integrations_of(session, section_id, wanted))


def reach_with(
    session: Session, section_id: str, user_id: str, channels: Iterable[str], known: Mapping[str, Integration]
) -> Reach:
    """`reach` with the section's integrations already read (`integrations_of`): a batch of many
    recipients reads them once, not once per recipient."""
    wanted = list(dict.fromkeys(channels))
    identifiers: dict[str, list[str]] = {}
    for kind, value_hash in session.execute(_IDENTIFIERS, {"section_id": section_id, "user_id": user_id}):
        identifiers.setdefault(kind, []).append(value_hash)

    def opted_in(channel: str, integration: Integration, hashes: list[str]) -> list[OptIn]:
        lst = _active_list(session, integration.id)
        if lst is not None:
            # A synced subscriber list overrides earlier opt-ins/outs (store/subscribers.py).
            listed = effective_opt_in(session, lst, section_id, channel, hashes)
            return [listed] if listed is not None else []
        params = {"section_id": section_id, "channel": channel, "hashes": hashes}
        return list(session.execute(_OPTED_IN, params).scalars().all())

    return _reach_of(wanted, known, identifiers, opted_in)


def _reach_of(
    wanted: list[str],
    known: Mapping[str, Integration],
    identifiers: Mapping[str, list[str]],
    opted_in: Callable[[str, Integration, list[str]], list[OptIn]],
) -> Reach:
    """A user's reach from their identifiers (kind -> hashes) and `opted_in`, the opt-in rows of a
    channel among some of their hashes."""
    integrations = {channel: known[channel] for channel in wanted if channel in known}
    unreachable: dict[str, str] = {}
    opt_ins: dict[str, OptIn] = {}
    for channel in wanted:
        integration = integrations.get(channel)
        if integration is None:
            unreachable[channel] = "no_integration"
            continue
        hashes = identifiers.get(identifier_kind(channel, integration.identifier_type), [])
        if not hashes:
            unreachable[channel] = "no_identifier"
            continue
        rows = opted_in(channel, integration, hashes)
        if not rows:
            unreachable[channel] = "not_opted_in"
            continue
        opt_ins[channel] = max(rows, key=lambda r: r.updated_at)
    return Reach(integrations=integrations, unreachable=unreachable, opt_ins=opt_ins)


def reach_many(
    session: Session, section_id: str, user_ids: list[str], channels: Iterable[str], known: Mapping[str, Integration]
) -> dict[str, Reach] | None:
    """`reach_with` of several users, by user id, in one read of their identifiers and one of their
    opt-ins per channel: a batch's recipients. None when an integration of these channels has a
    synced subscriber list (it decides per identifier: read one user at a time, `reach_with`)."""
    wanted = list(dict.fromkeys(channels))
    if any(_active_list(session, known[ch].id) is not None for ch in wanted if ch in known):
        return None
    identifiers: dict[str, dict[str, list[str]]] = {user_id: {} for user_id in user_ids}
    rows = session.execute(
        select(col(UserIdentifier.user_id), col(UserIdentifier.kind), col(UserIdentifier.value_hash)).where(
            col(UserIdentifier.section_id) == section_id, col(UserIdentifier.user_id).in_(user_ids)
        )
    )
    for user_id, kind, value_hash in rows:
        identifiers[user_id].setdefault(kind, []).append(value_hash)
    by_hash: dict[tuple[str, str], list[OptIn]] = {}  # (channel, hash) -> its opted-in rows
    for channel in wanted:
        integration = known.get(channel)
        if integration is None:
            continue
        kind = identifier_kind(channel, integration.identifier_type)
        hashes = sorted({h for ids in identifiers.values() for h in ids.get(kind, [])})
        if hashes:
            params = {"section_id": section_id, "channel": channel, "hashes": hashes}
            for row in session.execute(_OPTED_IN, params).scalars():
                by_hash.setdefault((channel, row.value_hash), []).append(row)

    def opted_in(channel: str, integration: Integration, hashes: list[str]) -> list[OptIn]:
        return [row for h in hashes for row in by_hash.get((channel, h), [])]

    return {user_id: _reach_of(wanted, known, identifiers[user_id], opted_in) for user_id in user_ids}


def find_opt_in(
    s: Session, section_id: str, channel: str, value_hash: str, legacy_hash: str | None = None
) -> OptIn | None:
    """The opt-in row of an identifier, by its hash, or by `legacy_hash` for a row stored before
    the hash changed (Web Push: the raw subscription JSON's, now the endpoint's, see
    `domain.hashing.web_push_key`). A row found by its legacy hash is moved to the current hash,
    with the user identifier naming it, so reachability and the next lookup find it directly."""
    row = s.exec(_OPT_IN_BY_HASH, params={"section_id": section_id, "channel": channel, "hash": value_hash}).first()
    if row is not None or legacy_hash is None or legacy_hash == value_hash:
        return row
    row = s.exec(_OPT_IN_BY_HASH, params={"section_id": section_id, "channel": channel, "hash": legacy_hash}).first()
    if row is not None:
        row.value_hash = value_hash
        s.add(row)
        _move_identifier(s, section_id, channel, legacy_hash, value_hash)
    return row


_OPT_IN_BY_HASH = select(OptIn).where(
    col(OptIn.section_id) == bindparam("section_id"),
    col(OptIn.channel) == bindparam("channel"),
    col(OptIn.value_hash) == bindparam("hash"),
)


def _move_identifier(
    s: Session, section_id: str, channel: str, old_hash: str, new_hash: str, *, old_wins: bool = False
) -> None:
    """Re-key the push identifier `old_hash` (kind = channel, `identifier_kind`) to `new_hash`; a user
    already holding `new_hash` keeps it unless `old_wins`, and the old row goes."""
    old = s.get(UserIdentifier, (section_id, channel, old_hash))
    if old is None:
        return
    held = s.get(UserIdentifier, (section_id, channel, new_hash))
    if held is None:
        s.add(UserIdentifier(section_id=section_id, kind=channel, value_hash=new_hash, user_id=old.user_id))
    elif old_wins:
        held.user_id = old.user_id
        s.add(held)
    s.delete(old)


REKEY_PAGE = 500
_WEB_PUSH_PAGE = (
    select(OptIn)
    .where(col(OptIn.channel) == "web_push", col(OptIn.id) > bindparam("after"))
    .order_by(col(OptIn.id))
    .limit(REKEY_PAGE)
)


def rekey_web_push(s: Session, decrypt: Callable[[str], str]) -> int:
    """Move every Web Push opt-in stored under its raw JSON's hash (before `web_push_key`) to its
    endpoint's hash, with the user identifiers naming it; returns the rows moved or merged.

    `find_opt_in` moves a row when the same JSON comes again; this finds the rest, those whose
    opt-out or re-subscription arrives written another way. Rows of one endpoint become one: the
    newest (its consent, its keys, its user) wins. Idempotent (a row already keyed by its endpoint
    is left alone), so a run cut short is simply run again. Paged by id, one flush per row."""
    changed, after = 0, 0
    while True:
        page = s.exec(_WEB_PUSH_PAGE, params={"after": after}).all()
        if not page:
            return changed
        for row in page:
            try:
                key = web_push_key(decrypt(row.value_enc))
            except UndecryptableSecret:  # under a key no longer configured: no send can use it either
                log.warning("web push opt-in %s left as it is: no configured key decrypts it", row.id)
                continue
            if key != row.value_hash:
                _rekey(s, row, key)
                changed += 1
        after = page[-1].id or after


def _rekey(s: Session, row: OptIn, key: str) -> None:
    """Move `row` to hash `key`, or fold it into the row already there (the newer one's state wins)."""
    legacy = row.value_hash
    held = s.exec(_OPT_IN_BY_HASH, params={"section_id": row.section_id, "channel": row.channel, "hash": key}).first()
    newer = held is None or row.updated_at > held.updated_at
    if held is None:
        row.value_hash = key
        s.add(row)
    else:
        if newer:
            held.value_enc, held.opted_in, held.source = row.value_enc, row.opted_in, row.source
            held.updated_at = row.updated_at
            s.add(held)
        s.delete(row)
    s.flush()  # the unique (section, channel, hash) must hold before the next row of the page
    _move_identifier(s, row.section_id, row.channel, legacy, key, old_wins=newer)
    s.flush()


def opt_out_gone(s: Session, opt_in_id: int) -> bool:
    """The provider says this token/subscription is dead for good: stop sending to it.

    Recorded with source 'provider' so operators can tell it from a user's own opt-out; a
    later opt-in (the app registers a fresh token) opts in again as usual.
    """
    row = s.get(OptIn, opt_in_id)
    if row is None or not row.opted_in:
        return False
    row.opted_in, row.source, row.updated_at = False, "provider", now_utc()
    s.add(row)
    log.info("opted out %s identifier %s: the provider reports it gone", row.channel, row.id)
    return True
