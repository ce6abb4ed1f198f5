"""Event ingestion: apply an accepted request to user state and work out the journey commands.

One database transaction per request: resolve the user, apply each event in order (identity,
cart, push opt-ins), store it with the journey commands it implies, commit. Only then are the
commands sent to Temporal; a failed dispatch leaves the events marked undispatched and the
sweeper (`redispatch_pending`) replays them, so an accepted event is never lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, bindparam, delete, exists, insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AppState
from api.journeys import (
    ClosedRun, JourneyCommand, UnmetExit, dispatch_all, trigger_already_applied, trigger_input, unrun_enrollment,
)  # fmt: skip
from domain.allocation import allocate, keep_or_allocate
from domain.campaign import CampaignSpec, CampaignType, Variation
from domain.conditions import matches
from domain.events import CollectBase, EventKind, Identity, NormalizedEvent, sha256_hex, user_identity
from domain.hashing import push_token_hash
from domain.matching import (
    CART_NO_LONGER_MATCHES, Catalog, event_catalog_skus, event_skus, exit_at_merge, exit_reason, exits_at_merge,
    reads_catalog, triggers,
)  # fmt: skip
from security.crypto import SecretBox
from settings import Settings
from store import cart_index, journey_rows, report_rollup, users
from store.campaigns import LiveCampaign, live_campaigns
from store.engine import Store
from store.locks import (
    cuid_lock_key, device_lock_key, identifier_lock_key, lock_keys, opt_in_lock_key, user_lock_key,
)  # fmt: skip
from store.event_marks import mark_dispatched
from store.reachability import find_opt_in
from store.statements import table_of
from store.tables import Event, Journey, OptIn, Product, User, UserIdentifier, now_utc
from workflows.ids import journey_workflow_id
from workflows.models import Enrollment, JourneyPlan

log = logging.getLogger(__name__)
# Core INSERTs of events, built once: the ORM's bulk-insert layer cost more than the statement,
# and a statement built per call pays its construction and cache key every time.
EVENT_TABLE = table_of(Event)
CONSENT_WITHDRAWN = "consent_withdrawn"  # the exit reason of journeys ended by `active_consent_accepted: false`
_INSERT_EVENT = insert(EVENT_TABLE)
# Normalised fields kept out of an event's stored data: the identifiers and push token an event
# brings live in their own rows (the user's identifiers; the opt-in, its token encrypted).
_NOT_EVENT_DATA = {"identity", "identifiers", "push_token"}


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


@dataclass
class Accepted:
    event_ids: list[str] = field(default_factory=list)
    commands: list[JourneyCommand] = field(default_factory=list)
    user_id: str = ""
    # The user has older events not yet dispatched: these must wait behind them (the sweeper
    # replays in receive order), or an exit could overtake the trigger it is meant to cancel.
    queued_behind_pending: bool = False


def _catalog(s: Session, section_id: str, skus: set[str]) -> Catalog:
    if not skus:
        return {}
    rows = s.exec(select(Product).where(Product.section_id == section_id, col(Product.sku).in_(skus))).all()
    return {p.sku: p.model_dump(exclude={"section_id", "updated_at"}) for p in rows}


def _push_opt(s: Session, box: SecretBox, section_id: str, user_id: str, ev: NormalizedEvent, now: datetime) -> None:
    """Legacy push opt-in/out events: the token becomes the user's identifier on that channel.

    A Web Push subscription is keyed by its endpoint (`push_token_hash`), so an opt-out or a
    re-subscription written another way finds the same row; a row stored under the raw JSON's
    hash before is moved on (`find_opt_in`). An opt-in stores the token it brings: a subscription's
    keys can rotate under the same endpoint, and sends must use the newest."""
    assert ev.push_token
    channel, token_hash = _push_key(ev)
    opting_in = ev.kind == EventKind.MESSAGE_OPTIN
    # Looked up before the identifier is added: a row found by its legacy hash moves its identifier.
    row = find_opt_in(s, section_id, channel, token_hash, legacy_hash=sha256_hex(ev.push_token))
    if row is None:
        row = OptIn(
            section_id=section_id, channel=channel, identifier_type="push_token", value_hash=token_hash,
            value_enc=box.encrypt(ev.push_token), opted_in=True, updated_at=now,
        )  # fmt: skip
    elif opting_in and channel == "web_push":
        row.value_enc = box.encrypt(ev.push_token)
    users.add_identifier(s, section_id, user_id, channel, token_hash)
    row.opted_in = opting_in
    row.updated_at = now
    s.add(row)
    if opting_in:
        s.flush()  # the row's time counts below
        _keep_newest_push_subscriptions(s, section_id, user_id, channel, token_hash)


# A person has a few browsers and apps; a device key that gathered tens of thousands of push
# opt-ins (a flood of made-up subscriptions) made every decision and render of that user read them
# all (`store.reachability.reach`). Sends use the newest opt-in only, so the oldest beyond this go.
MAX_PUSH_SUBSCRIPTIONS = 20


def _keep_newest_push_subscriptions(s: Session, section_id: str, user_id: str, channel: str, kept: str) -> None:
    """Delete the user's oldest push subscriptions of `channel` beyond `MAX_PUSH_SUBSCRIPTIONS`: their
    identifiers and their opt-ins (an opt-in left without its identifier would outlive an erasure).
    `kept`, the one just opted in, stays whatever the times (a batch's events share one)."""
    ident = table_of(UserIdentifier).c
    opt = table_of(OptIn).c
    rows = s.execute(
        select(ident.value_hash, opt.updated_at)
        .select_from(table_of(UserIdentifier))
        .outerjoin(
            table_of(OptIn),
            and_(opt.section_id == ident.section_id, opt.channel == channel, opt.value_hash == ident.value_hash),
        )
        .where(ident.section_id == section_id, ident.user_id == user_id, ident.kind == channel)
    ).all()
    if len(rows) <= MAX_PUSH_SUBSCRIPTIONS:
        return
    oldest_first = sorted(rows, key=lambda r: (r.value_hash == kept, r.updated_at or datetime.min.replace(tzinfo=UTC)))
    drop = [r.value_hash for r in oldest_first[: len(rows) - MAX_PUSH_SUBSCRIPTIONS]]
    where = (ident.section_id == section_id, ident.kind == channel, ident.value_hash.in_(drop))
    s.execute(delete(table_of(UserIdentifier)).where(*where))
    opt_where = (opt.section_id == section_id, opt.channel == channel, opt.value_hash.in_(drop))
    s.execute(delete(table_of(OptIn)).where(*opt_where))
    log.info("user %s: %d oldest %s subscriptions dropped (more than %d)", user_id, len(drop), channel,
             MAX_PUSH_SUBSCRIPTIONS)  # fmt: skip


# Attempts at a request's transaction: PostgreSQL may still end one with a deadlock (40P01) or a
# serialization failure (40001) where writers outside ingestion's locks meet it (journeys, reports,
# retention...). The whole transaction runs again, from a new session: nothing of the failed attempt
# was committed (its events, journey rows, cart) and nothing was dispatched (commands leave only
# with `accept`'s result), so the event is stored, and its journeys started, once.
ATTEMPTS = 3
_RETRIED_SQLSTATES = {"40P01": "deadlock", "40001": "serialization failure"}


class UsersChanged(Exception):
    """A user the request resolved was not among those it had locked (`_lock_users`): a merge
    committed between the read of whom to lock and the lock. The attempt is rolled back and run again."""


def accept(
    store: Store, box: SecretBox, settings: Settings, section_id: str, body: CollectBase, events: list[NormalizedEvent]
) -> Accepted:
    """Apply the request's events to user state, store them, and return the journey commands.

    One transaction (`_accept_once`), run again (at most `ATTEMPTS` in all, after a short random
    pause) when PostgreSQL ended it with a deadlock or serialization failure, or the users it
    resolved changed under it (`UsersChanged`)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _accept_once(store, box, settings, section_id, body, events)
        except (DBAPIError, UsersChanged) as exc:
            reason = _retried_reason(exc)
            if reason is None or attempt == ATTEMPTS:
                raise
            log.warning("section %s: ingestion rolled back (%s), attempt %d of %d", section_id, reason,
                        attempt + 1, ATTEMPTS)  # fmt: skip
            time.sleep(random.uniform(0.005, 0.05) * attempt)  # jitter: the two sides do not meet again at once
    raise AssertionError("unreachable")


def _retried_reason(exc: Exception) -> str | None:
    """Why the failed attempt is run again, or None when it is not (any other error)."""
    if isinstance(exc, UsersChanged):
        return "users changed under the lock"
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)  # psycopg 3, psycopg2
    return _RETRIED_SQLSTATES.get(sqlstate) if isinstance(sqlstate, str) else None


def _accept_once(
    store: Store, box: SecretBox, settings: Settings, section_id: str, body: CollectBase, events: list[NormalizedEvent]
) -> Accepted:
    result = Accepted()
    identity = user_identity(body.user)  # a plain email cuid is hashed here, as in an identify event
    with store.session() as s:
        # Exits owed by journeys a merge just moved to the person (`_exits_of_moved_journeys`): sent
        # with the next event's commands, the first of this request or the identify that merged.
        merge_exits: list[MergeExit] = []
        # First: concurrent requests of one device or person resolve, create and merge it in turn.
        # Rare: a `dyid_server` that differs from `dyid` (a reset script cookie); both are locked and resolved.
        both = body.user.differing_device_keys
        lock_keys(s, identity_lock_keys(section_id, both or body.user.device_key, identity, events))
        # Then the users they name, before anything is read of them or written (`_lock_users`).
        locked = _lock_users(s, section_id, both or body.user.device_key, _request_cuids(identity, events))
        # The request's time is read once it holds its locks (PostgreSQL) or the write lock (SQLite's
        # BEGIN IMMEDIATE, which `connection()` opens): a person's events are then received in the
        # order their transactions commit. The sweeper replays in that order, and an exit waits only
        # for journeys enrolled no later than its event (`exits_awaiting_start`); read before the
        # lock, a request that waited on another could be stamped before the trigger it saw.
        s.connection()
        now = now_utc()
        campaigns = live_campaigns(s, section_id)
        needs_catalog = any(reads_catalog(spec) for _, spec in campaigns)
        cuid = identity.cuid if identity is not None else None
        device_key: users.DeviceKeys = body.user.device_key
        if both is None:
            user, unsaved = users.resolve_user(s, section_id, device_key=body.user.device_key, cuid=cuid, now=now)
        else:  # the keys the user holds now go on to be written and moved together
            user, unsaved, device_key = users.resolve_linked_devices(s, section_id, both, cuid=cuid, now=now)
        _check_locked(locked, user, unsaved, now)
        # A user first seen in this request has no journeys: allocation looks none up for them.
        first_seen = user.id if unsaved else None
        if identity is not None and user.cuid != identity.cuid:
            # The request's own cuid identifies the user as an identify event does (merge, identifiers
            # linked); a user already holding it (the usual repeat request) costs nothing more.
            if unsaved:
                users.save_new_user(s, user, device_key)  # identifiers reference the row
                unsaved = False
            merges, merged_id = users.folds_into_owner(user, identity), user.id
            user = users.identify(s, user, identity, device_key, now)
            _check_locked(locked, user, False, now)
            if merges and user.id != merged_id:
                merge_exits = _exits_of_moved_journeys(s, user, merged_id, campaigns)
        locale = body.context.page.locale if body.context and body.context.page else None
        if locale:
            user.locale = locale
        # Set before the events, not after: the user's row is then written once, at commit,
        # with its cart, instead of once when a lookup autoflushes the cart and again for this.
        user.updated_at = now
        # user id -> has events still queued for dispatch (read with the running journeys).
        pending: dict[str, bool] = {}
        # Journeys this request enrolled, per user (user id -> campaign -> workflow id): a later event
        # of the same user re-triggers them rather than enrolling a second one. Per user: after a
        # login switched person (shared device), the next person's events must not reach them.
        enrolled_now: dict[str, dict[str, list[str]]] = {}
        to_enroll: list[Journey] = []
        # Journeys this request already told that consent was withdrawn: their rows stay active
        # until the workflow ends, and one exit each is enough for a batch of events.
        withdrawn: set[str] = set()
        # Purchases after an enrollment of this request: their enrolled-user conversions are counted
        # once the enrollments are written (rare: a backend batching add-to-cart and purchase).
        purchases_after_enrollment: list[str] = []
        exited_at_merge: set[str] = set()  # workflow ids of `merge_exits` already sent
        for position, ev in enumerate(events):
            if unsaved and (ev.kind == EventKind.IDENTIFY or ev.push_token):
                users.save_new_user(s, user, device_key)  # merges and identifiers reference the row
                cart_index.add_entries(s, user)  # the cart of this request's earlier events
                unsaved = False
            if ev.kind == EventKind.IDENTIFY and ev.identity is not None:
                merged_id = user.id
                user, merges = _identify(s, user, ev.identity, device_key, now, enrolled_now, to_enroll)
                _check_locked(locked, user, False, now)
                if merges:
                    merge_exits += _exits_of_moved_journeys(s, user, merged_id, campaigns, to_enroll)
            elif ev.kind == EventKind.IDENTIFY and ev.identifiers:
                _link_identifiers(s, section_id, user, ev.identifiers)
            if ev.kind in (EventKind.MESSAGE_OPTIN, EventKind.MESSAGE_OPTOUT) and ev.push_token:
                _push_opt(s, box, section_id, user.id, ev, now)
            before = cart_index.skus(user)
            cart = users.apply_cart(user, ev)
            if not unsaved:
                cart_index.update(s, user, before)  # same transaction as the cart itself
            catalog = _catalog(s, section_id, event_catalog_skus(ev, cart)) if needs_catalog else {}
            event_id = new_event_id()
            # A user first seen in this request has no journeys yet: nothing to look up.
            running = _running_journeys(s, section_id, user.id, pending) if campaigns and not unsaved else {}
            running = _with_enrolled(running, enrolled_now.get(user.id))
            # A journey told to exit at a merge is no longer the person's (its row stays active until
            # the workflow ends): later events neither re-trigger it nor keep it over another.
            exited_at_merge.update(m.workflow_id for m in merge_exits)
            if exited_at_merge:
                running = {c: [w for w in ws if w not in exited_at_merge] for c, ws in running.items()}
            # Distinct, increasing times keep a batch's order for the sweeper's replay.
            received_at = now + timedelta(microseconds=position)
            enrolled: list[Journey] = []  # a withdrawal starts nothing: no consent
            if body.user.withdraws_consent:
                commands = _consent_withdrawn(running, event_id, withdrawn)
            else:
                commands, enrolled = _commands(
                    s, section_id, user, ev, cart, catalog, campaigns, event_id, body.user.consented, settings,
                    running, received_at, known=user.id != first_seen,
                )  # fmt: skip
            if merge_exits:  # first: the event's own commands may start the person's next journey
                owed = [_exit(m.workflow_id, event_id, m.campaign_id, m.reason, journey_active=True, skus=m.skus)
                        for m in merge_exits]  # fmt: skip
                commands, merge_exits = owed + commands, []
            row = {
                "id": event_id,
                "section_id": section_id,
                "user_id": user.id,
                "kind": ev.kind.value,
                "name": ev.name,
                "data": ev.model_dump(mode="json", exclude_none=True, exclude=_NOT_EVENT_DATA),
                "consented": body.user.consented,
                "received_at": received_at,
                "dispatched": not commands,
                "deferred": False,
                "transaction_id": ev.transaction_id,
                "value": ev.value,
                "identified": bool(user.cuid),  # as attribution sees it below
                "commands": [c.model_dump(mode="json") for c in commands],
            }
            s.connection().execute(_INSERT_EVENT, row)  # a plain INSERT: events are never changed in this transaction
            for journey in enrolled:  # recorded below, in this transaction: it exists from its trigger on
                to_enroll.append(journey)
                enrolled_now.setdefault(user.id, {})[journey.campaign_id] = [journey.workflow_id]
            if to_enroll and ev.kind == EventKind.PURCHASE:
                purchases_after_enrollment.append(event_id)
            if report_rollup.attributes(ev.kind.value) and (user.cuid or (not unsaved and ev.kind.value == "purchase")):
                # Attribution candidates, in this transaction (identified = has a CUID now, at purchase time),
                # and an anonymous purchase's enrolled-user conversions (a user first seen here has no cohort).
                report_rollup.attribute_event(s, Event.model_validate(row), identified=bool(user.cuid))
            result.event_ids.append(event_id)
            result.commands.extend(commands)
        user.updated_at = now  # again: an identify may have moved the request to another user
        if unsaved:  # one INSERT with the cart as the events left it, then its device and index
            users.save_new_user(s, user, device_key)
            cart_index.add_entries(s, user)
        else:
            s.add(user)
        result.user_id = user.id
        if result.commands and not unsaved:  # a new user has no earlier events to wait behind
            queued = pending.get(user.id)  # not read: an identify moved the request to another user
            if queued is None:
                queued = _has_pending(s, section_id, user.id, result.event_ids)
            result.queued_behind_pending = queued
        if to_enroll:
            # Last before the commit: enrolling bumps the campaign's report counter for the hour,
            # a row every start in the campaign updates. Its lock is held until the commit, so
            # nothing else of the transaction may run while holding it (measured: a third of the
            # starts' time in PostgreSQL went to waiting for that lock when it came mid-way).
            s.flush()
            for journey in to_enroll:
                journey_rows.enroll(s, journey)
            # The cohorts exist now: the conversions the purchases above could not see yet.
            report_rollup.count_conversions_after_enrollment(
                s, section_id, [j.user_id for j in to_enroll], purchases_after_enrollment
            )
    return result


def _identify(
    s: Session, user: User, identity: Identity, device_key: users.DeviceKeys, now: datetime,
    enrolled_now: dict[str, dict[str, list[str]]], to_enroll: list[Journey],
) -> tuple[User, bool]:  # fmt: skip
    """An identification event mid-request (`users.identify`); returns the user the request goes on
    with, and whether the request's user was merged into them.

    When it merges the request's user into the CUID's owner, the journeys this request enrolled
    for the merged user are the person's: their later events re-trigger them, and their rows, not
    yet written (`to_enroll`, after the merge re-pointed the user's stored rows), are the owner's,
    or the person's next request found none and started a second journey (two reminders). Any
    other change of user (another known person, a newcomer on the device) carries nothing over."""
    merges = users.folds_into_owner(user, identity)
    merged_id = user.id
    user = users.identify(s, user, identity, device_key, now)
    if merges and user.id != merged_id:
        carried = enrolled_now.pop(merged_id, {})
        mine = enrolled_now.setdefault(user.id, {})
        for campaign_id, workflow_ids in carried.items():
            mine[campaign_id] = mine.get(campaign_id, []) + workflow_ids
        for journey in to_enroll:
            if journey.user_id == merged_id:
                journey.user_id = user.id
        return user, True
    return user, False


@dataclass(frozen=True)
class MergeExit:
    """An exit owed by a journey a merge moved to the person (`_exits_of_moved_journeys`)."""

    workflow_id: str
    campaign_id: str
    reason: str
    skus: list[str]


def _exits_of_moved_journeys(
    s: Session, person: User, merged_id: str, campaigns: list[tuple[LiveCampaign, CampaignSpec]],
    enrolling: list[Journey] | None = None,
) -> list[MergeExit]:  # fmt: skip
    """Exits for the running journeys a merge of `merged_id` just moved to `person` that the person's
    own events since the journey's trigger would have ended: a purchase (another device's, say) for a
    campaign exiting on purchase, and for a cart journey the merged cart being empty (the person's
    cart changed last: `users.merge_users`). Without this the moved journey ran on after the purchase,
    reminding the person of an empty cart. Only at a merge: one read (the moved journeys, by their
    workflow ids, with the person's purchases since each trigger; the catalog too for purchase exits
    with product conditions), none when no live campaign exits on a purchase or an empty cart.

    Also the person's treated journeys of a campaign they are held out of now, by the earliest
    allocation of the two users (`journey_rows.held_out_but_running`, one read of the person's
    journeys in campaigns with a control): exit `merged_into_holdout`, whichever side ran them.
    `enrolling`: the journeys this request enrolled, not written yet (`_identify` gave the merged
    user's to the person): a device batching its trigger and its login is held out the same way."""
    out = _exits_for_persons_events(s, person, merged_id, campaigns)
    # A treated journey of a person held out of its campaign (either side of the merge): it ends too.
    controls = {c.id: v.id for c, spec in campaigns for v in spec.variations if v.control}
    owed = {m.workflow_id for m in out}
    for workflow_id, campaign_id in journey_rows.held_out_but_running(s, person.section_id, person.id, controls):
        if workflow_id not in owed:
            out.append(MergeExit(workflow_id, campaign_id, journey_rows.MERGED_INTO_HOLDOUT, []))
    out += _enrolled_into_holdout(s, person, controls, enrolling or [])
    if out:
        # Recorded now, in the merge's transaction: their exit signals go only after the commit, and
        # a step due meanwhile must already see the exit (`JourneyActivities.decide_in` skips it).
        journey_rows.exit_owed_at_merge(s, person.section_id, [(m.workflow_id, m.reason) for m in out], now_utc())
        log.info("merge of %s: %d moved journeys exit (%s)", merged_id, len(out), ", ".join(m.reason for m in out))
    return out


def _enrolled_into_holdout(
    s: Session, person: User, controls: dict[str, str], enrolling: list[Journey]
) -> list[MergeExit]:
    """Exits of the treated journeys this request enrolled for the person (rows not written yet,
    their trigger commands already made) in a campaign whose earliest stored journey of the person
    is its control: every stored journey is earlier than this request's triggers. The row is
    written exited, so the workflow's first step sends nothing (`variation_and_exit`)."""
    out: list[MergeExit] = []
    for journey in enrolling:
        control = controls.get(journey.campaign_id)
        if journey.user_id != person.id or journey.status != "active" or control in (None, journey.variation_id):
            continue
        if journey_rows.first_variation(s, person.section_id, journey.campaign_id, person.id) == control:
            journey.status, journey.exit_reason = journey_rows.EXITED, journey_rows.MERGED_INTO_HOLDOUT
            journey.ended_at = now_utc()
            out.append(MergeExit(journey.workflow_id, journey.campaign_id, journey_rows.MERGED_INTO_HOLDOUT, []))
    return out


def _exits_for_persons_events(
    s: Session, person: User, merged_id: str, campaigns: list[tuple[LiveCampaign, CampaignSpec]]
) -> list[MergeExit]:
    """The moved journeys' exits for what the person did since their trigger (`_exits_of_moved_journeys`)."""
    exiting = {c.id: spec for c, spec in campaigns if exits_at_merge(spec)}
    if not exiting:
        return []
    section_id = person.section_id
    moved = {journey_workflow_id(section_id, cid, merged_id): cid for cid in exiting}
    rows = s.exec(
        _MOVED_JOURNEYS, params={"section_id": section_id, "user_id": person.id, "workflow_ids": list(moved)}
    ).all()
    purchases: dict[str, list[NormalizedEvent]] = {}
    for workflow_id, data in rows:
        found = purchases.setdefault(workflow_id, [])
        if data is not None:
            found.append(NormalizedEvent.model_validate(data))
    out: list[MergeExit] = []
    for workflow_id, bought in purchases.items():
        spec = exiting[moved[workflow_id]]
        catalog: Catalog = {}
        if spec.type != CampaignType.CART_ABANDONMENT and reads_catalog(spec):
            catalog = _catalog(s, section_id, {i.sku for ev in bought for i in ev.cart or []})
        # person.cart is the merged cart (`users.merge_users`): non-empty when a device carted after the purchase
        exit_ = exit_at_merge(spec, not person.cart, bought, catalog)
        if exit_ is not None:
            out.append(MergeExit(workflow_id, moved[workflow_id], *exit_))
    return out


# The active journeys of these workflow ids (moved to the person by a merge), each with the person's
# purchases after its trigger, oldest first (one row of NULL data when there is none):
# ix_journey_user, then ix_event_user_time per journey.
_MOVED_JOURNEYS = (
    select(Journey.workflow_id, Event.data)
    .select_from(Journey)
    .outerjoin(
        Event,
        and_(
            col(Event.section_id) == col(Journey.section_id),
            col(Event.user_id) == col(Journey.user_id),
            col(Event.received_at) > col(Journey.triggered_at),
            col(Event.kind) == EventKind.PURCHASE.value,
        ),
    )
    .where(
        col(Journey.section_id) == bindparam("section_id"),
        col(Journey.user_id) == bindparam("user_id"),
        col(Journey.status) == "active",
        col(Journey.workflow_id).in_(bindparam("workflow_ids", expanding=True)),
    )
    .order_by(col(Journey.workflow_id), col(Event.received_at))
)


def _link_identifiers(s: Session, section_id: str, user: User, identifiers: list[tuple[str, str]]) -> None:
    """Link an identification event's phone and email to the request's user when it names no CUID
    (a newsletter subscription by phone only): a secondary identifier sticks to the user once
    reported (dy-api.md §3), so a later opt-in of it reaches them. One an identified person (a user
    with a CUID) holds stays theirs: a number typed into a form is no proof of being that person,
    and moving it would end their SMS journeys (`no_identifier`). One an anonymous user holds moves."""
    for kind, value_hash in identifiers:
        held = s.get(UserIdentifier, (section_id, kind, value_hash))
        if held is not None and held.user_id != user.id:
            holder = users.canonical_user(s, held.user_id)
            if holder is not None and holder.id != user.id and holder.cuid:
                continue
        users.add_identifier(s, section_id, user.id, kind, value_hash)


def _with_enrolled(running: dict[str, list[str]], enrolled: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The user's running journeys with those this request enrolled for them (not yet written, so
    not read back). Both are kept: after a merge mid-request the person may have one of each in a
    campaign, and the duplicate must be told to exit (`_commands`) rather than go on unseen."""
    if not enrolled:
        return running
    out = dict(running)
    for campaign_id, workflow_ids in enrolled.items():
        known = out.get(campaign_id, [])
        out[campaign_id] = known + [w for w in workflow_ids if w not in known]
    return out


def _variation(
    s: Session, section_id: str, campaign_id: str, spec: CampaignSpec, user_id: str, *, known: bool, running: bool
) -> Variation:
    """The variation a trigger of the user allocates: the one of the person's first journey in the
    campaign while the spec still has it (`keep_or_allocate`), so an edit of the variations or
    shares, or a merge, never moves a returning person to another arm of the test.

    A trigger reaching a running journey only labels the start of a run that turns out to have
    ended (the workflow then enrolls itself, `journey.enroll`): no lookup on the re-trigger path."""
    if running:
        return allocate(campaign_id, user_id, spec.variations)
    first = journey_rows.first_variation(s, section_id, campaign_id, user_id) if known else None
    return keep_or_allocate(campaign_id, user_id, spec.variations, first)


# Built once (they run for most requests of known users): composing them cost more than running them.
# Events of the user still queued for dispatch (deferred, not yet dispatched; in-flight inline
# dispatches don't block). One definition for both statements below.
_QUEUED_FOR_DISPATCH = (
    col(Event.section_id) == bindparam("section_id"),
    col(Event.user_id) == bindparam("user_id"),
    col(Event.dispatched) == False,  # noqa: E712
    col(Event.deferred) == True,  # noqa: E712
)
_PENDING = (
    select(Event.id).where(*_QUEUED_FOR_DISPATCH, col(Event.id).not_in(bindparam("own", expanding=True))).limit(1)
)
# The user's active journeys and, in the same round trip, whether the user has events queued
# for dispatch (`_PENDING` without the request's own events: they are stored not deferred). One
# row per journey, or one row of NULLs with the flag when none runs.
_QUEUED = select(exists().where(*_QUEUED_FOR_DISPATCH).label("pending")).subquery("queued")
_RUNNING = (
    select(_QUEUED.c.pending, Journey.campaign_id, Journey.workflow_id)
    .select_from(_QUEUED)
    .outerjoin(
        Journey,
        and_(
            col(Journey.section_id) == bindparam("section_id"),
            col(Journey.user_id) == bindparam("user_id"),
            col(Journey.status) == "active",
        ),
    )
)


def _has_pending(s: Session, section_id: str, user_id: str, own: list[str]) -> bool:
    row = s.exec(_PENDING, params={"section_id": section_id, "user_id": user_id, "own": own}).first()
    return row is not None


def identity_lock_keys(
    section_id: str, device_key: users.DeviceKeys, identity: Identity | None, events: list[NormalizedEvent]
) -> list[str]:
    """The identities a request may look up, create or merge, as lock keys (PostgreSQL; SQLite's
    write lock already serialises requests): its device (both keys of a differing `dyid_server`
    and `dyid`: either may be linked to the user), its CUIDs and the identifiers they bring,
    and its push opt-ins' tokens. Without them, concurrent first requests of one device, or
    logins of one person on several devices, raced read-then-insert into duplicate-key errors
    (500s), two users with one CUID, or a cart and journeys written under an id a login had just
    merged away (which the person's purchase then never exited)."""
    keys = [device_lock_key(section_id, key) for key in users.device_keys(device_key)]
    identities = [identity] if identity is not None else []
    identities += [ev.identity for ev in events if ev.kind == EventKind.IDENTIFY and ev.identity is not None]
    for found in identities:
        keys.append(cuid_lock_key(section_id, found.cuid))
        hashes = (("email", found.email_hash), ("phone", found.phone_hash))
        keys += [identifier_lock_key(section_id, kind, h) for kind, h in hashes if h]
    # Rare: the phone and email of identification events without a CUID (`_link_identifiers`).
    keys += [identifier_lock_key(section_id, kind, h) for ev in events for kind, h in ev.identifiers or []]
    # Rare: push opt-in rows and identifiers, keyed by the token's hash as `_push_opt` writes them,
    # under the key the opt-in API takes for the same subscription (its endpoint's for Web Push).
    keys += [opt_in_lock_key(section_id, *_push_key(ev)) for ev in events if ev.push_token]
    return keys


def _request_cuids(identity: Identity | None, events: list[NormalizedEvent]) -> list[str]:
    """The CUIDs a request identifies with: its own, and its identification events'."""
    found = [identity] if identity is not None else []
    found += [ev.identity for ev in events if ev.kind == EventKind.IDENTIFY and ev.identity is not None]
    return [i.cuid for i in found]


def _lock_users(s: Session, section_id: str, device_key: users.DeviceKeys, cuids: list[str]) -> set[str] | None:
    """Lock the users the request's device key(s) and CUIDs name (PostgreSQL; SQLite's write lock
    already serialises requests: None, nothing locked or checked): the device's user, and the
    person a login merges that user into or hands the device to. Returns the ids locked.

    Why: the identity keys lock what a request names, not whom it reaches. A login on device B
    (locking B, the CUID and its identifiers) merges B's anonymous user into the person while an
    add-to-cart on the person's device A (locking A only) updates the same person: both wrote the
    person's user row and cart index entries, in opposite orders, and PostgreSQL ended one with a
    deadlock (a load trial: 42% of such pairs answered 500). Locking the person's user id makes
    them take their turn, and the merged-away user's makes a request reaching it through another of
    its devices wait for the merge (and then find the person).

    Order, so that this second round cannot deadlock: every lock is (tier, lock id), identity keys
    (`identity_lock_keys`, and the opt-in API's and erasure's, which take only those) before user
    keys. A request takes its identity keys in one call (sorted), then reads whom to lock (a read:
    nothing written yet), then its user keys in one call (sorted), then reads the users and writes.
    A request waiting here holds identity keys and no row lock. Whoever holds the user key it waits
    for took all its advisory locks already, so it never waits for those identity keys; it may wait
    for a row lock, but not one held by a transaction that waits for an advisory lock this request
    holds: ingestion writes nothing before its last lock, an erasure rolls back before it locks
    again (its first round has written nothing), and the opt-in API and a list's unsubscribe write
    opt-in rows only under those rows' own keys (held, so ingestion is not writing them). So every
    wait points to a later (tier, id) or to a transaction waiting on no lock of ours: no cycle.
    A deadlock left among plain row locks (writers outside these locks) is retried (`accept`).

    The ids are read before the lock, so a merge committed in between (of the device's user into a
    person not locked here) is caught when the request resolves its user (`_check_locked`); the user
    rows themselves are read after the lock, never before (a row read before it would keep the cart a
    merge has just changed). The CUIDs' holders cannot change meanwhile: their keys are held."""
    if s.get_bind().dialect.name != "postgresql":
        return None
    ids = users.person_ids(s, section_id, device_key, cuids)
    lock_keys(s, [user_lock_key(section_id, i) for i in ids])
    return ids


def _check_locked(locked: set[str] | None, user: User, unsaved: bool, now: datetime) -> None:
    """The request goes on with a user it locked (`_lock_users`), or one it created itself; else
    `UsersChanged`: the attempt is rolled back and run again, finding the new state."""
    if locked is None or unsaved or user.id in locked or user.created_at == now:
        return
    log.info("user %s resolved but not locked (a merge committed meanwhile): the request runs again", user.id)
    raise UsersChanged(user.id)


def _push_key(ev: NormalizedEvent) -> tuple[str, str]:
    """A push opt-in event's channel and the hash its subscription's rows are keyed by."""
    assert ev.push_token
    channel = "web_push" if ev.push_channel == "WEB_PUSH" else "app_push"
    return channel, push_token_hash(channel, ev.push_token)


def _running_journeys(s: Session, section_id: str, user_id: str, pending: dict[str, bool]) -> dict[str, list[str]]:
    """Campaign -> workflow ids of the user's active journeys; records in `pending` whether the
    user has events queued for dispatch (a round trip fewer than asking apart).

    After a merge, a journey started under a merged-away id keeps that workflow id; exits and
    re-triggers must reach it rather than start a second journey for the same person.
    """
    rows = s.exec(_RUNNING, params={"section_id": section_id, "user_id": user_id}).all()
    out: dict[str, list[str]] = {}
    for queued, campaign_id, workflow_id in rows:
        pending[user_id] = bool(queued)  # the same on every row
        if campaign_id is not None:
            out.setdefault(campaign_id, []).append(workflow_id)
    return out


def _kept_journey(s: Session, section_id: str, campaign_id: str, user_id: str, own: str, active: list[str]) -> str:
    """Of a person's active journeys in a campaign (several after a merge), the workflow id that goes
    on: one in the variation of the person's first journey, which is the arm reports count them in
    (`keep_or_allocate`), else their own, else the first by id. Keeping their own regardless had
    people counted in one arm and messaged from the other."""
    if len(active) < 2:
        return active[0] if active else own
    first = journey_rows.first_variation(s, section_id, campaign_id, user_id)
    rows = s.exec(
        select(Journey.workflow_id)
        .where(col(Journey.workflow_id).in_(active), Journey.status == "active", Journey.variation_id == first)
        .order_by(col(Journey.triggered_at))
    ).all()
    in_arm = list(rows)  # active journeys of the workflow ids in `active`, in the first variation
    if in_arm:
        return own if own in in_arm else in_arm[0]
    return own if own in active else sorted(active)[0]


def _consent_withdrawn(running: dict[str, list[str]], event_id: str, told: set[str]) -> list[JourneyCommand]:
    """Exits for every running journey of a user whose request says `active_consent_accepted: false`
    (GDPR: a withdrawal ends what consent started, at once; a send in flight may still complete).
    Only the literal false withdraws: a missing flag starts nothing but ends nothing either."""
    out: list[JourneyCommand] = []
    for campaign_id, workflow_ids in sorted(running.items()):
        for wid in sorted(set(workflow_ids) - told):
            told.add(wid)
            out.append(_exit(wid, event_id, campaign_id, CONSENT_WITHDRAWN, journey_active=True))
    return out


def _exit(
    workflow_id: str, event_id: str, campaign_id: str, reason: str, *, journey_active: bool,
    skus: list[str] | None = None,
) -> JourneyCommand:  # fmt: skip
    """An exit command; `journey_active`: the store has the journey active (`running`), so an exit
    that finds no workflow asks Temporal whether it closed (`JourneyCommand.journey_active`)."""
    return JourneyCommand(
        action="exit", workflow_id=workflow_id, event_id=event_id, campaign_id=campaign_id, reason=reason,
        skus=skus or [], journey_active=journey_active,
    )  # fmt: skip


def _commands(
    s: Session,
    section_id: str,
    user: User,
    ev: NormalizedEvent,
    cart: list,  # type: ignore[type-arg]
    catalog: Catalog,
    campaigns: list[tuple[LiveCampaign, CampaignSpec]],
    event_id: str,
    consented: bool,
    settings: Settings,
    running: dict[str, list[str]],
    received_at: datetime,
    *,
    known: bool,
) -> tuple[list[JourneyCommand], list[Journey]]:
    """The event's journey commands, and the journeys its triggers enroll (rows to record, in the
    ingestion transaction, so a journey exists from its trigger on: patch `enroll-at-trigger`).
    `known`: the user existed before this request (only such a user can have journeys)."""
    out: list[JourneyCommand] = []
    enrolled: list[Journey] = []
    for campaign, spec in campaigns:
        # One journey per person and campaign: after a merge the person's own journey is kept
        # (else the one started under a merged id) and any other is exited as a duplicate.
        own = journey_workflow_id(section_id, campaign.id, user.id)
        active = running.get(campaign.id, [])
        wid = _kept_journey(s, section_id, campaign.id, user.id, own, active)
        for dup in sorted(set(active) - {wid}):
            out.append(_exit(dup, event_id, campaign.id, "merged_duplicate", journey_active=True))
        reason = exit_reason(spec, ev, cart, catalog)
        if reason == CART_NO_LONGER_MATCHES and not active:
            reason = None  # most cart events of most users: no journey to tell, no signal to send
        if reason is not None:
            purchased = [i.sku for i in ev.cart or []]
            out.append(_exit(wid, event_id, campaign.id, reason, journey_active=bool(active), skus=purchased))
            continue
        # Without consent (missing or non-true active_consent_accepted) no journey starts;
        # exits above still apply, as they only ever send less.
        if campaign.status != "active" or not consented or not triggers(spec, ev, cart, catalog):
            continue
        if not matches(spec.audience.conditions, user.attributes, spec.audience.match):
            continue
        variation = _variation(s, section_id, campaign.id, spec, user.id, known=known, running=bool(active))
        if variation.control and not active and report_rollup.held_out(s, campaign.id, user.id, variation.id):
            # Already counted in the holdout, where every later trigger would start (and at once
            # end) one more journey and workflow: a busy holdout cart cost more than a treated one.
            continue
        inp = trigger_input(
            section_id, campaign.id, campaign.version, user.id, spec.trigger.wait, user.is_test,
            settings.delivery_timeout, received_at,
        )  # fmt: skip
        if not active:
            # No journey of this person runs in the campaign: this trigger starts one, enrolled
            # here (`accept` records it). If another request's trigger started it first, the
            # dispatch finds the workflow running and withdraws this enrollment.
            inp.enrollment = Enrollment(journey_id=str(uuid.uuid4()), plan=JourneyPlan.of(variation))
            enrolled.append(
                journey_rows.new_journey(
                    journey_id=inp.enrollment.journey_id, workflow_id=wid, section_id=section_id,
                    campaign_id=campaign.id, campaign_version=campaign.version, priority=spec.priority,
                    user_id=user.id, variation=variation, is_test=user.is_test, at=received_at,
                )  # fmt: skip
            )
        out.append(
            JourneyCommand(
                action="trigger",
                workflow_id=wid,
                event_id=event_id,
                campaign_id=campaign.id,
                skus=event_skus(ev, cart),
                input=inp,
                variation_id=variation.id,
            )
        )
    return out, enrolled


# How long an exit waits for the start of the journey it targets before it is given up (with a
# warning): far longer than a start takes, even behind a Temporal outage the sweeper rides out.
EXIT_WAITS_FOR_START = timedelta(hours=1)


def exits_awaiting_start(store: Store, unmet: list[UnmetExit]) -> bool:
    """Whether an exit that found no running journey (`Dispatched.exits_unmet`) must wait: the
    store still has the journey active, so its workflow has not started yet (another request's
    trigger is on its way to Temporal) rather than ended (a journey's row ends before its
    workflow does). Dropping that exit sent every step after the purchase meant to stop them.
    Callers skip it (and its thread hop) when every exit reached its journey.

    First, journeys whose workflow Temporal reports closed (`UnmetExit.closed`: terminated by an
    operator, failed, timed out) are ended in the store: no start will come for them, and their
    exit waiting an hour filled the sweeper's rounds. Their exit is met (no step runs any more).

    An exit waits only for a journey enrolled at or before its own event (`Journey.triggered_at` is
    the enrolling event's `received_at`, the order the sweeper replays in): a journey a LATER event of
    the person enrolled starts from that event, which the sweeper holds behind this one
    (`redispatch_pending`), so waiting for it froze the person's events for `EXIT_WAITS_FOR_START`,
    their purchases included. Nor is such a journey this exit's to end: the exit came before its trigger."""
    with store.session() as s:
        for exit_ in unmet:
            if exit_.closed is not None:
                _end_closed_journey(s, exit_.workflow_id, exit_.closed)
        active = s.exec(
            select(Journey.workflow_id, Journey.triggered_at).where(
                col(Journey.workflow_id).in_([u.workflow_id for u in unmet]), Journey.status == "active"
            )
        ).all()
        if not active:
            return False
        event_ids = {u.event_id for u in unmet if u.event_id is not None}
        found = s.exec(select(Event.id, Event.received_at).where(col(Event.id).in_(event_ids))).all()
        at: dict[str, datetime] = dict(found)
    for exit_ in unmet:
        exit_at = at.get(exit_.event_id) if exit_.event_id is not None else None
        for workflow_id, triggered_at in active:
            # An exit whose event is not found (erased since) waits as before, at most the hour.
            if workflow_id == exit_.workflow_id and (exit_at is None or triggered_at <= exit_at):
                return True
    return False


# The status of a journey whose workflow was closed outside Rejoin; its reason says how
# ("workflow_terminated", "workflow_failed", "workflow_timed_out", "workflow_canceled"...).
CLOSED_OUTSIDE = "exited"


def _end_closed_journey(s: Session, workflow_id: str, closed: ClosedRun) -> None:
    """End the row of the journey the closed run ran. A run that enrolled itself carries no journey
    id: its row is left active (the exit waits, then is given up: EXIT_WAITS_FOR_START), as is a
    newer journey of the same workflow id whose start is on its way (it has another id)."""
    if closed.journey_id is None:
        return
    reason = f"workflow_{closed.status}"
    if journey_rows.end_if_active(s, closed.journey_id, CLOSED_OUTSIDE, reason, now_utc()):
        log.warning("journey %s ended (%s): workflow %s closed outside Rejoin", closed.journey_id, reason, workflow_id)


def withdraw_enrollments(store: Store, journey_ids: list[str]) -> None:
    """End, as merged, the journeys enrolled at triggers that did not start them (`dispatch_all`)."""
    if journey_ids:
        with store.session() as s:
            ended = journey_rows.withdraw(s, journey_ids)
        log.info("merged %d of %d enrollments into the person's running journey", ended, len(journey_ids))


async def redispatch_pending(
    state: AppState, *, older_than: timedelta = timedelta(seconds=10), limit: int = 500
) -> int:
    """Replay journey commands of events whose dispatch did not complete (the sweeper)."""
    cutoff = now_utc() - older_than

    def pending() -> list[Event]:
        # Oldest first: per user, commands must reach Temporal in the order events arrived.
        with state.store.session() as s:
            return list(
                s.exec(
                    select(Event)
                    .where(Event.dispatched == False, col(Event.received_at) < cutoff)  # noqa: E712
                    .order_by(col(Event.received_at), col(Event.id))
                    .limit(limit)
                ).all()
            )

    rows = await asyncio.to_thread(pending)
    if not rows:
        return 0
    client = await state.client()
    waiting_users: set[str | None] = set()  # a user's later events stay behind one that waits
    for ev in rows:
        if ev.user_id in waiting_users:
            continue
        try:
            replayed = await _replay(state, client, ev)
        except RPCError as exc:
            if exc.status in _TEMPORAL_DOWN:
                raise  # the rest would fail alike: the next round tries again
            replayed = _replay_failed(ev, exc)
        except OperationalError:
            raise  # the database is unreachable: likewise
        except Exception as exc:  # one event's failure must not hold up every other user's
            replayed = _replay_failed(ev, exc)
        if not replayed:
            waiting_users.add(ev.user_id)
    log.info("re-dispatched %d pending events", len(rows))
    return len(rows)


# Answers that mean Temporal itself cannot be reached, or asks its callers to back off (rate-limited
# namespace): the sweep stops until its next round instead of trying every other pending event (a call
# each). ABORTED is not one: a conflict on one workflow, retried with that event in the next round.
_TEMPORAL_DOWN = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED)


async def _replay(state: AppState, client: Client, ev: Event) -> bool:
    """Send one undispatched event's commands again; False if it must wait for a later round (an
    exit whose journey has not started yet), else True once it is marked dispatched."""
    cmds: list[JourneyCommand] = []
    unrun: list[str] = []
    for c in (JourneyCommand.model_validate(c) for c in ev.commands):
        # A trigger that reached a journey which has ended since must not start a second one;
        # if that journey was another than the one the trigger enrolled, the enrollment never ran.
        applied = await trigger_already_applied(client, c.workflow_id, c.event_id) if c.action == "trigger" else None
        if applied is None:
            cmds.append(c)
        elif (journey_id := unrun_enrollment(c, applied.journey_id)) is not None:
            unrun.append(journey_id)
    done = await dispatch_all(client, state.settings.task_queue, cmds)
    await asyncio.to_thread(withdraw_enrollments, state.store, unrun + done.unstarted)
    if bool(done.exits_unmet) and await asyncio.to_thread(exits_awaiting_start, state.store, done.exits_unmet):
        if ev.received_at > now_utc() - EXIT_WAITS_FOR_START:
            return False  # the next round tries again; the exit is not dropped
        log.warning("event %s: exit given up, its journey did not start within %s", ev.id, EXIT_WAITS_FOR_START)
    await asyncio.to_thread(mark_dispatched, state.store, [ev.id])
    return True


def _replay_failed(ev: Event, exc: Exception) -> bool:
    """An event whose replay failed stays undispatched for the next round, and so do its user's
    later events (their order); the sweep goes on with other users' events (before, the first
    such event stopped every round at the same place, and no later event was ever replayed)."""
    log.warning("re-dispatch of event %s failed, retried next round: %s", ev.id, exc)
    return False
