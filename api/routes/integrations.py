"""Channel integrations (one per channel per section): the provider each channel sends through.

Create, read, update, delete, and a test call. Each kind's configuration is validated by the
adapter's own `Config` model (providers/registry.py maps kinds to adapters). Secrets are split
out (providers/secret_fields.py), encrypted with the configured key into `secrets_enc` and only
ever returned masked; sending a masked value back on update keeps the stored secret (a header's
by its name, wherever it now sits). OAuth2 credentials are checked against the token URL before
anything is saved. Calls made here (token checks, the test call) wait for a provider exactly as
long as the worker's deliveries do (`providers/http.py::provider_call_timeouts`): the
integration's own `timeout_seconds` when it has one (1 to 60, and at most 80% of a delivery
attempt, `REJOIN_DELIVERY_TIMEOUT`: a value above that is refused at save), else the default.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import datetime
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unprocessable
from domain.campaign import CampaignSpec, Channel
from providers import secret_fields
from providers.base import ConfigurationError, OutboundMessage, ProviderError, kept_answer
from providers.http import call_budget, is_timeout, provider_call_timeouts
from providers.recipients import identifier_type_error
from providers.registry import (
    INTEGRATION_KINDS,
    NO_HTTP_KINDS,
    TIMEOUT_KEY,
    TIMEOUT_RANGE,
    ProviderRegistry,
    addresses,
    channels_for,
    config_model,
)
from settings import Settings
from store.campaigns import load_spec
from store.engine import Store
from store.tables import Campaign, Integration, now_utc

router = APIRouter(prefix="/api/v1/integrations", tags=["integrations"])

RATE_KEY = "rate_limit_per_second"


class IntegrationIn(BaseModel):
    channel: Channel
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(min_length=1, max_length=40, description=f"one of {', '.join(INTEGRATION_KINDS)}")
    identifier_type: Literal["email", "phone", "custom"] = "email"
    config: dict[str, Any] = Field(default_factory=dict)
    rate_limit_per_second: float | None = Field(None, gt=0, le=100_000)
    timeout_seconds: float | None = Field(
        None,
        ge=TIMEOUT_RANGE[0],
        le=TIMEOUT_RANGE[1],
        description="How long a call waits for the provider's answer (default 10 s); at most 80% of "
        "REJOIN_DELIVERY_TIMEOUT. Not for outbox and smtp (SMTP has config.timeout)",
    )


class IntegrationPublic(BaseModel):
    id: str
    channel: str
    name: str
    kind: str
    identifier_type: str
    config: dict[str, Any]  # secrets shown as "********"
    rate_limit_per_second: float | None = None
    timeout_seconds: float | None = None
    created_at: datetime
    updated_at: datetime


class TestCall(BaseModel):
    payload: dict[str, Any] = Field(default_factory=dict)
    recipient: str = Field("test-recipient", max_length=2000)


class TestCallResult(BaseModel):
    ok: bool
    status: int | None
    headers: dict[str, str]
    body: str
    error: str | None = None


def _public(row: Integration) -> IntegrationPublic:
    config = dict(row.config)
    rate = config.pop(RATE_KEY, None)
    timeout = config.pop(TIMEOUT_KEY, None)
    return IntegrationPublic(
        id=row.id,
        channel=row.channel,
        name=row.name,
        kind=row.kind,
        identifier_type=row.identifier_type,
        config=config,
        rate_limit_per_second=rate,
        timeout_seconds=timeout,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _registry(
    settings: Settings, store: Store, http: httpx.AsyncClient, http2: httpx.AsyncClient | None = None
) -> ProviderRegistry:
    return ProviderRegistry(
        store,
        http,
        allow_private_urls=settings.allow_private_urls,
        allowed_targets=settings.allowed_private_targets,
        http2=http2,
        delivery_timeout=settings.delivery_timeout,  # an integration's own timeout is held to it, as in the worker
    )


def _timeout_problem(body: IntegrationIn, settings: Settings) -> str | None:
    """Why `timeout_seconds` cannot be kept as given, or None. Above the attempt's share it would be
    clipped at every call (a provider call must end inside its attempt): refused, saying the most."""
    if body.timeout_seconds is None:
        return None
    if body.kind in NO_HTTP_KINDS:
        extra = " (set config.timeout instead)" if body.kind == "smtp" else ""
        return f"a {body.kind} integration makes no HTTP call: timeout_seconds does not apply{extra}"
    most = call_budget(settings.delivery_timeout)
    if body.timeout_seconds > most:
        return (
            f"at most {most:g} s: a provider call must end within 80% of a delivery attempt "
            f"(REJOIN_DELIVERY_TIMEOUT, {settings.delivery_timeout.total_seconds():g} s here); raise that to allow more"
        )
    return None


def _http(settings: Settings, *, http2: bool = False) -> httpx.AsyncClient:
    # The deliveries' limits, not longer ones: a test call must not pass on an answer that would
    # time out (and be retried) in every real send.
    read, connect = provider_call_timeouts(settings.delivery_timeout)
    return httpx.AsyncClient(timeout=httpx.Timeout(read, connect=connect), http2=http2)


async def _prepare(
    state: StateDep, body: IntegrationIn, old_public: dict[str, Any], old_secrets: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the body against the stored configuration (`old_public`, `old_secrets`; empty on
    create); returns (public config with masks, secrets by path). Raises 422."""
    if body.kind not in INTEGRATION_KINDS:
        raise Unprocessable(f"unknown kind '{body.kind}' (one of {', '.join(INTEGRATION_KINDS)})", field="kind")
    if body.channel.value not in channels_for(body.kind):
        raise Unprocessable(f"a {body.kind} integration cannot serve the {body.channel.value} channel", field="channel")
    timeout_problem = _timeout_problem(body, state.settings)
    if timeout_problem is not None:
        raise Unprocessable(timeout_problem, field="timeout_seconds")
    # Masked values sent back mean "keep what is stored".
    public, sent = secret_fields.split(body.config)
    kept, missing = secret_fields.keep_masked(sent, old_secrets, public=public, old_public=old_public)
    if missing:
        raise Unprocessable("a masked value was sent but no secret is stored there", field=f"config.{missing[0]}")
    full = secret_fields.merge(public, kept)
    # A mask left in a field that is not secret (a header with "secret": false) would otherwise
    # be sent to the vendor as the literal text.
    unresolved = secret_fields.masks_in(full)
    if unresolved:
        raise Unprocessable(
            "a masked value only stands for a stored secret, and this field is not secret: send the real value, "
            "or mark the header secret to keep its stored one",
            field=f"config.{unresolved[0]}",
        )
    model = config_model(body.kind)
    if model is not None:
        try:
            # The channel lets a preset default by it (Klaviyo's profile_field: phone_number on SMS).
            full = model.model_validate(full, context={"channel": body.channel.value}).model_dump(mode="json")
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in ("config", *err["loc"]))
            raise Unprocessable(str(err["msg"]), field=loc) from None
    else:
        full = {}
    # A kept (masked) secret goes wherever the configuration now points: changing an address
    # (custom URL, base/token/login URL, SMTP host or port) while keeping stored secrets would let
    # any management key send them to a host of its choosing, so they must be entered again. Checked
    # before anything is called: the OAuth2 check below would already send the secret there.
    masked = [path for path, value in sent.items() if value == secret_fields.MASK]
    if masked and addresses(full) != addresses(old_public):
        raise Unprocessable("re-enter this secret: the integration's address changed", field=f"config.{masked[0]}")
    mismatch = identifier_type_error(body.kind, body.identifier_type, full)
    if mismatch is not None:
        raise Unprocessable(mismatch, field="identifier_type")
    if body.timeout_seconds is not None:
        # Kept with the configuration: the save-time check below and every send read it from there.
        full[TIMEOUT_KEY] = body.timeout_seconds
    async with _http(state.settings) as http:
        registry = _registry(state.settings, state.store, http)
        refused = await registry.refused_urls(full)
        if refused is not None:
            raise Unprocessable(refused[1], field=f"config.{refused[0]}")
        try:
            await registry.validate(body.kind, full)
        except (ConfigurationError, ProviderError) as exc:
            # Messages here never contain the secret itself (see providers/oauth.py).
            raise Unprocessable(f"credentials could not be verified: {exc}", field="config") from None
    public, secret_values = secret_fields.split(full)
    if body.rate_limit_per_second is not None:
        public[RATE_KEY] = body.rate_limit_per_second
    return public, secret_values


def _load(state: StateDep, section_id: str, integration_id: str) -> tuple[Integration, dict[str, Any]]:
    with state.store.session() as s:
        row = s.get(Integration, integration_id)
        if row is None or row.section_id != section_id:
            raise NotFound("no such integration", field="integration_id")
        s.expunge(row)
    old = json.loads(state.box.decrypt(row.secrets_enc)) if row.secrets_enc else {}
    return row, old


@router.post("", status_code=201)
async def create(body: IntegrationIn, principal: Management, state: StateDep) -> IntegrationPublic:
    public, secret_values = await _prepare(state, body, {}, {})
    now = now_utc()
    row = Integration(
        id="int_" + secrets.token_hex(6),
        section_id=principal.section_id,
        channel=body.channel.value,
        name=body.name,
        kind=body.kind,
        identifier_type=body.identifier_type,
        config=public,
        secrets_enc=state.box.encrypt(json.dumps(secret_values)) if secret_values else None,
        created_at=now,
        updated_at=now,
    )

    def save() -> IntegrationPublic:
        try:
            with state.store.session() as s:
                s.add(row)
        except IntegrityError:
            raise Conflict(f"the section already has a {body.channel.value} integration", field="channel") from None
        return _public(row)

    return await asyncio.to_thread(save)


@router.get("")
def list_integrations(principal: Management, state: StateDep) -> list[IntegrationPublic]:
    with state.store.session() as s:
        rows = s.exec(select(Integration).where(Integration.section_id == principal.section_id)).all()
        return [_public(r) for r in rows]


@router.get("/{integration_id}")
def read(integration_id: str, principal: Management, state: StateDep) -> IntegrationPublic:
    row, _ = _load(state, principal.section_id, integration_id)
    return _public(row)


@router.put("/{integration_id}")
async def update(integration_id: str, body: IntegrationIn, principal: Management, state: StateDep) -> IntegrationPublic:
    """Replace name, kind, identifier type, config and rate limit; the channel stays."""
    row, old = await asyncio.to_thread(_load, state, principal.section_id, integration_id)
    if body.channel.value != row.channel:
        raise Unprocessable("the channel of an integration cannot change; create another", field="channel")
    same_kind = body.kind == row.kind
    public, secret_values = await _prepare(state, body, row.config if same_kind else {}, old if same_kind else {})

    def save() -> IntegrationPublic:
        with state.store.session() as s:
            current = s.get(Integration, integration_id)
            if current is None:
                raise NotFound("no such integration", field="integration_id")
            current.name, current.kind, current.identifier_type = body.name, body.kind, body.identifier_type
            current.config = public
            current.secrets_enc = state.box.encrypt(json.dumps(secret_values)) if secret_values else None
            current.updated_at = now_utc()
            s.add(current)
            s.flush()
            s.refresh(current)
            return _public(current)

    return await asyncio.to_thread(save)


FORCE = Query(False, description="Delete even though active or paused campaigns send on its channel")
# Campaigns named in a refusal: enough to find them, not a list of hundreds in one message.
NAMED_USERS = 5


def _campaigns_on_channel(s: Session, section_id: str, channel: str) -> list[Campaign]:
    """The section's active and paused campaigns with a message on `channel` (their journeys would
    fail at send without its integration; archived and draft campaigns start none)."""
    rows = s.exec(
        select(Campaign)
        .where(Campaign.section_id == section_id, col(Campaign.status).in_(("active", "paused")))
        .order_by(col(Campaign.created_at))
    ).all()
    return [c for c in rows if channel in _channels_of(load_spec(s, c.id, c.version))]


def _channels_of(spec: CampaignSpec) -> set[str]:
    return {ch.value for var in spec.variations for step in var.steps for ch in step.messages}


def _in_use(campaigns: list[Campaign], channel: str) -> Conflict:
    named = ", ".join(f"'{c.name}' ({c.id})" for c in campaigns[:NAMED_USERS])
    more = f" and {len(campaigns) - NAMED_USERS} more" if len(campaigns) > NAMED_USERS else ""
    return Conflict(
        f"{len(campaigns)} active or paused campaign(s) send {channel} messages through this integration: "
        f"{named}{more}; their journeys would fail at send. Archive them first (to change the provider, "
        "update this integration instead), or delete anyway with ?force=true",
        field="integration_id",
    )


@router.delete("/{integration_id}", status_code=204)
def delete(integration_id: str, principal: Management, state: StateDep, force: bool = FORCE) -> None:
    """Delete the integration; 409 naming the active or paused campaigns that send on its channel
    unless `force`."""
    with state.store.session() as s:
        row = s.get(Integration, integration_id)
        if row is None or row.section_id != principal.section_id:
            raise NotFound("no such integration", field="integration_id")
        if not force:
            users = _campaigns_on_channel(s, principal.section_id, row.channel)
            if users:
                raise _in_use(users, row.channel)
        s.delete(row)


@router.post("/{integration_id}/test")
async def test_call(integration_id: str, body: TestCall, principal: Management, state: StateDep) -> TestCallResult:
    """Send `payload` through the integration now; answer with what the provider said, addresses in
    its body masked as wherever Rejoin shows or keeps an answer (`providers/base.py::kept_answer`)."""
    row, stored = await asyncio.to_thread(_load, state, principal.section_id, integration_id)
    message = OutboundMessage(
        section_id=row.section_id,
        integration_id=row.id,
        channel=row.channel,
        recipient=body.recipient,
        payload=body.payload,
        idempotency_key="test-" + secrets.token_hex(8),
        config=secret_fields.merge(dict(row.config), stored),
        secrets=stored,
        campaign_name="Test call",
        step_name="Test call",
    )
    # APNs gets an HTTP/2 client as in the worker (build_worker), so the test call speaks what deliveries do.
    async with _http(state.settings) as http, _http(state.settings, http2=True) as http2:
        registry = _registry(state.settings, state.store, http, http2)
        try:
            resp = await registry.for_kind(row.kind).send(message)
        except ProviderError as err:
            error = err.message
            if is_timeout(err):
                read = registry.read_timeout(message.config)  # the integration's own, as deliveries wait
                _, connect = provider_call_timeouts(state.settings.delivery_timeout)
                error = (
                    f"{err.message}: the provider did not answer within the limits every delivery has "
                    f"({read:g} s, {connect:g} s to connect); real sends to it would time out and be retried "
                    "(only once where the vendor does not de-duplicate: then failed); the integration's "
                    "timeout_seconds lets it wait longer"
                )
            return TestCallResult(ok=False, status=err.status, headers=err.headers, body=err.body, error=error)
        except ConfigurationError as err:
            return TestCallResult(ok=False, status=None, headers={}, body="", error=f"configuration: {err}")
    return TestCallResult(ok=True, status=resp.status, headers=resp.headers, body=kept_answer(resp.body))
