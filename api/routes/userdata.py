"""Opt-in / opt-out (Experience API shape): `/v2/userdata/channels/{channel}/opt-in|opt-out`.

The identifier type must equal the channel integration's; the value is stored encrypted and
looked up by hash. Phone numbers are stored in E.164 (`domain/identifiers.py`), so any way of
writing one finds the same row; a Web Push opt-in must be a usable subscription, and is found by
its endpoint however its JSON is written (`domain.hashing.web_push_key`), its latest keys kept.
Takes effect for the very next send decision.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlmodel import select

from api.deps import Ingestion, StateDep
from api.errors import Unprocessable
from domain import email_address
from domain.email_address import is_email
from domain.events import email_hash, phone_hash, sha256_hex
from domain.hashing import web_push_key
from domain.identifiers import check_web_push_subscription, normalize_phone
from store.locks import lock_keys, opt_in_lock_key
from store.reachability import find_opt_in
from store.tables import Integration, OptIn, now_utc

router = APIRouter(prefix="/v2/userdata/channels", tags=["ingestion"])

CHANNEL_NAMES = {
    "email": "email", "sms": "sms",
    "app_push": "app_push", "apppush": "app_push", "app-push": "app_push",
    "web_push": "web_push", "webpush": "web_push", "web-push": "web_push",
}  # fmt: skip
TYPE_NAMES = {"email": "email", "phonenumber": "phone", "phone": "phone", "custom": "custom"}
# An opt-out only has to find a row: rows stored before opt-ins took one plain address
# (`domain.email_address`) may hold a comma, a space or a display name, and can still be opted out.
# Anything around an @ with no control character (the value is stored, encrypted, if no row has it).
_STORED_EMAIL = re.compile(r"[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f@]@[^\x00-\x1f\x7f]+")
_NOT_STORED_EMAIL = "an email address to opt out must hold an @ and no control characters"


class IdentifierIn(BaseModel):
    type: str = Field(min_length=1, max_length=32)
    value: str = Field(min_length=1, max_length=2000)  # a Web Push subscription (JSON) is long


class OptRequest(BaseModel):
    identifier: IdentifierIn


class OptResult(BaseModel):
    channel: str
    status: Literal["opted_in", "opted_out"]


def _normalized(channel: str, id_type: str, value: str, opted_in: bool, allow_http: bool) -> str:
    """The value as stored and sent: phones in E.164; a Web Push opt-in must be a usable
    subscription (opt-outs are not checked, so a value stored before this check can still opt out)."""
    try:
        if id_type == "phone":
            return normalize_phone(value)
        if channel == "web_push" and opted_in:
            check_web_push_subscription(value, allow_http=allow_http)
    except ValueError as exc:
        raise Unprocessable(str(exc), field="identifier.value") from None
    return value


def _hash_for(channel: str, id_type: str, value: str, opted_in: bool) -> str:
    if id_type == "email":
        # An opt-in is one plain address: a list (`a,b@c.com`) would be one RCPT per address.
        if opted_in and not is_email(value):
            raise Unprocessable(email_address.INVALID, field="identifier.value")
        if not opted_in and _STORED_EMAIL.fullmatch(value) is None:
            raise Unprocessable(_NOT_STORED_EMAIL, field="identifier.value")
        return email_hash(value)
    if id_type == "phone":
        return phone_hash(value)  # already E.164 (`_normalized`)
    if channel == "web_push":
        return web_push_key(value)  # the endpoint's hash: any serialisation of the subscription
    return sha256_hex(value)


def _address_inside(value: str) -> str | None:
    """The one plain address in an email written another way (a display name, a space before the @),
    or None when `value` is one already or holds none (a list: `a,b@c.com` parses as `a`)."""
    address = parseaddr(value)[1]
    return address if address and address.lower() != value.lower() and is_email(address) else None


def _apply(state: StateDep, section_id: str, channel_name: str, body: OptRequest, opted_in: bool) -> OptResult:
    channel = CHANNEL_NAMES.get(channel_name.lower())
    if channel is None:
        raise Unprocessable(f"unknown channel '{channel_name}' (email, sms, app_push, web_push)", field="path.channel")
    id_type = TYPE_NAMES.get(body.identifier.type.lower())
    if id_type is None:
        raise Unprocessable("identifier.type must be email, phoneNumber or custom", field="identifier.type")
    with state.store.session() as s:
        integration = s.exec(
            select(Integration).where(Integration.section_id == section_id, Integration.channel == channel)
        ).first()
        if integration is None:
            raise Unprocessable(f"the section has no {channel} integration yet", field="path.channel")
        if integration.identifier_type != id_type:
            raise Unprocessable(
                f"the {channel} integration identifies users by {integration.identifier_type}, not {id_type}",
                field="identifier.type",
            )
        # http push endpoints only where private URLs are allowed (local stand-ins for push services).
        allow_http = state.settings.allow_private_urls
        value = _normalized(channel, id_type, body.identifier.value.strip(), opted_in, allow_http)
        value_hash = _hash_for(channel, id_type, value, opted_in)
        # A Web Push row stored before it was keyed by endpoint has the raw JSON's hash (moved on).
        legacy_hash = sha256_hex(value) if channel == "web_push" else None
        # An email opt-out in a display form ("Jane <jane@x.example>", "jane @x.example"): the address
        # inside is what is opted out (else the answer said opted_out while the address stayed opted
        # in); a row stored under the raw form before opt-ins took one plain address is opted out too.
        inside = _address_inside(value) if id_type == "email" and not opted_in else None
        inside_hash = email_hash(inside) if inside is not None else None
        # Concurrent opt-ins of one new identifier take turns (PostgreSQL): both read "no row" and
        # the second insert was a duplicate-key 500. The key is the one a push opt-in event and an
        # erasure take for this row (`store.locks.opt_in_lock_key`); both forms' in one call (one order).
        lock_keys(s, [opt_in_lock_key(section_id, channel, h) for h in (value_hash, inside_hash) if h is not None])
        box = state.box
        if inside is not None and inside_hash is not None:
            stored_raw = find_opt_in(s, section_id, channel, value_hash, None)
            if stored_raw is not None:
                stored_raw.opted_in, stored_raw.source, stored_raw.updated_at = False, "api", now_utc()
                s.add(stored_raw)
            value, value_hash = inside, inside_hash
        row = find_opt_in(s, section_id, channel, value_hash, legacy_hash)
        if row is None:
            row = OptIn(
                section_id=section_id, channel=channel, identifier_type=id_type, value_hash=value_hash,
                value_enc=box.encrypt(value), opted_in=opted_in, updated_at=now_utc(),
            )  # fmt: skip
        elif id_type == "phone" or (channel == "web_push" and opted_in):
            # A row stored before phones were normalised may hold "+1 555 ..."; a Web Push
            # re-subscription may bring new keys for the same endpoint. Sends use this value.
            row.value_enc = box.encrypt(value)
        row.opted_in, row.source, row.updated_at = opted_in, "api", now_utc()
        s.add(row)
    return OptResult(channel=channel, status="opted_in" if opted_in else "opted_out")


@router.post("/{channel}/opt-in")
def opt_in(channel: str, body: OptRequest, principal: Ingestion, state: StateDep) -> OptResult:
    return _apply(state, principal.section_id, channel, body, True)


@router.post("/{channel}/opt-out")
def opt_out(channel: str, body: OptRequest, principal: Ingestion, state: StateDep) -> OptResult:
    return _apply(state, principal.section_id, channel, body, False)
