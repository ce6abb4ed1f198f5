"""Can a user be reached on a channel? Integration, identifier of its type, and opt-in.

Users carry hashed identifiers (`UserIdentifier`); opt-ins carry the plain value encrypted and
its hash. A channel is reachable when the section has an integration for it, the user has an
identifier of the integration's type, and that identifier is opted in on the channel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

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


def reach(session: Session, section_id: str, user_id: str, channels: Iterable[str]) -> Reach:
    wanted = list(dict.fromkeys(channels))
    integrations = {
        i.channel: i
        for i in session.execute(_INTEGRATIONS, {"section_id": section_id, "channels": wanted}).scalars().all()
    }
    identifiers: dict[str, list[str]] = {}
    for kind, value_hash in session.execute(_IDENTIFIERS, {"section_id": section_id, "user_id": user_id}):
        identifiers.setdefault(kind, []).append(value_hash)
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
        lst = _active_list(session, integration.id)
        if lst is not None:
            # A synced subscriber list overrides earlier opt-ins/outs (store/subscribers.py).
            listed = effective_opt_in(session, lst, section_id, channel, hashes)
            rows = [listed] if listed is not None else []
        else:
            params = {"section_id": section_id, "channel": channel, "hashes": hashes}
            rows = list(session.execute(_OPTED_IN, params).scalars().all())
        if not rows:
            unreachable[channel] = "not_opted_in"
            continue
        opt_ins[channel] = max(rows, key=lambda r: r.updated_at)
    return Reach(integrations=integrations, unreachable=unreachable, opt_ins=opt_ins)


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
