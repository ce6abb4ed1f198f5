"""Saved message templates (reusable across campaigns) and the render preview.

A template is a JSON payload with `${...}` variables, validated on save like a campaign's
inline payloads; `variables` lists the free-text variable names it expects the variation to
define. Campaign messages refer to a template by `template_id`; a campaign is refused (422)
when it refers to a template that does not exist or uses free text its variation lacks, and a
template change is refused (422) when a campaign using it would then lack free text it needs.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, col, select

from activities.delivery import compose_payload, trigger_items
from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unprocessable
from domain.campaign import CampaignSpec, CampaignType, Channel, Variation
from domain.channels import choose_channel
from domain.render import MissingRequired, TemplateError, parse_json_template, validate_template
from domain.tracking import Linker, Signer
from store.campaigns import load_spec
from store.reachability import reach
from store.tables import Campaign, User, now_utc
from store.tracking_tables import MessageTemplate
from store.users import AmbiguousUserRef, find_user

router = APIRouter(prefix="/api/v1", tags=["templates"])


class TemplateIn(BaseModel):
    # A misspelt field is a 422 naming it (as campaign bodies), not silently dropped.
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    channel: Channel | None = Field(None, description="The channel the template is for; none: any channel")
    payload: dict[str, Any]
    variables: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=list, max_length=200)

    @field_validator("payload", mode="before")
    @classmethod
    def _parse_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return parse_json_template(v, "")
            except TemplateError as err:
                raise ValueError(err.message) from None
        return v


class TemplatePublic(TemplateIn):
    model_config = ConfigDict(extra="ignore")  # read from the row (section_id is not shown)

    variables: list[str] = Field(default_factory=list)  # rows saved before names had to be non-empty
    id: str
    created_at: datetime
    updated_at: datetime


def _check(body: TemplateIn) -> None:
    try:
        validate_template(body.payload, set(body.variables), "payload")
    except TemplateError as err:
        raise Unprocessable(err.message, field=err.place) from None


def _own(s: Session, section_id: str, template_id: str) -> MessageTemplate:
    t = s.get(MessageTemplate, template_id)
    if t is None or t.section_id != section_id:
        raise NotFound("no such template", field="template_id")
    return t


def _public(t: MessageTemplate) -> TemplatePublic:
    return TemplatePublic.model_validate(t.model_dump())


def _templated(spec: CampaignSpec) -> Iterator[tuple[str, Variation, str, Channel]]:
    """(place, variation, template id, channel) of every message of the campaign that uses a saved template."""
    for vi, var in enumerate(spec.variations):
        for si, step in enumerate(var.steps):
            for channel, message in step.messages.items():
                if message.template_id is not None:
                    yield f"variations.{vi}.steps.{si}.messages.{channel.value}", var, message.template_id, channel


def _wrong_channel(template: Channel | str | None, used_on: Channel) -> str | None:
    """Why a template for `template`'s channel cannot be used on `used_on` (an SMS body sent as an
    email, a push payload as an SMS), or None."""
    if template is None or Channel(template) == used_on:
        return None
    return f"the template is for {Channel(template).value}, not {used_on.value}"


def _live_campaigns(s: Session, section_id: str) -> Iterator[tuple[Campaign, CampaignSpec]]:
    """The section's campaigns that are not archived, with their current spec."""
    for c in s.exec(select(Campaign).where(Campaign.section_id == section_id, Campaign.status != "archived")).all():
        yield c, load_spec(s, c.id, c.version)


def check_campaign_templates(s: Session, section_id: str, spec: CampaignSpec) -> None:
    """422 naming the message when a referenced template is unknown or needs missing variables."""
    for place, var, template_id, channel in _templated(spec):
        t = s.get(MessageTemplate, template_id)
        if t is None or t.section_id != section_id:
            raise Unprocessable(f"no template '{template_id}' in this section", field=f"{place}.template_id")
        wrong = _wrong_channel(t.channel, channel)
        if wrong is not None:
            raise Unprocessable(wrong, field=f"{place}.template_id")
        try:
            validate_template(t.payload, set(var.variables), f"{place}.template")
        except TemplateError as err:
            raise Unprocessable(err.message, field=err.place) from None


@router.post("/templates", status_code=201)
def create_template(body: TemplateIn, principal: Management, state: StateDep) -> TemplatePublic:
    _check(body)
    now = now_utc()
    with state.store.session() as s:
        t = MessageTemplate(id="tpl_" + secrets.token_hex(6), section_id=principal.section_id,
                            created_at=now, updated_at=now, **body.model_dump(mode="json"))  # fmt: skip
        s.add(t)
        return _public(t)


@router.get("/templates")
def list_templates(principal: Management, state: StateDep) -> list[TemplatePublic]:
    with state.store.session() as s:
        rows = s.exec(select(MessageTemplate).where(MessageTemplate.section_id == principal.section_id)
                      .order_by(col(MessageTemplate.created_at))).all()  # fmt: skip
        return [_public(t) for t in rows]


@router.get("/templates/{template_id}")
def get_template(template_id: str, principal: Management, state: StateDep) -> TemplatePublic:
    with state.store.session() as s:
        return _public(_own(s, principal.section_id, template_id))


@router.put("/templates/{template_id}")
def update_template(template_id: str, body: TemplateIn, principal: Management, state: StateDep) -> TemplatePublic:
    _check(body)
    with state.store.session() as s:
        t = _own(s, principal.section_id, template_id)
        _check_users(s, principal.section_id, template_id, body)
        for k, v in body.model_dump(mode="json").items():
            setattr(t, k, v)
        t.updated_at = now_utc()
        s.add(t)
        return _public(t)


def _check_users(s: Session, section_id: str, template_id: str, body: TemplateIn) -> None:
    """422 when a campaign using the template lacks free text the changed payload needs (saved, it
    would render those variables empty and refuse its own next edit), or uses it on another
    channel than the one the template is now for."""
    for c, spec in _live_campaigns(s, section_id):
        for place, var, used, channel in _templated(spec):
            if used != template_id:
                continue
            wrong = _wrong_channel(body.channel, channel)
            if wrong is not None:
                raise Unprocessable(f"campaign '{c.name}' ({c.id}) uses this template on {channel.value} at {place}",
                                    field="channel")  # fmt: skip
            try:
                validate_template(body.payload, set(var.variables), "payload")
            except TemplateError as err:
                raise Unprocessable(
                    f"campaign '{c.name}' ({c.id}) uses this template at {place} and {err.message}; "
                    "define the variable in that variation first",
                    field=err.place,
                ) from None


def _used_by(s: Session, section_id: str, template_id: str) -> list[str]:
    return [c.id for c, spec in _live_campaigns(s, section_id) if template_id in {t[2] for t in _templated(spec)}]


@router.delete("/templates/{template_id}", status_code=204)
def delete_template(template_id: str, principal: Management, state: StateDep) -> Response:
    with state.store.session() as s:
        t = _own(s, principal.section_id, template_id)
        used = _used_by(s, principal.section_id, template_id)
        if used:
            raise Conflict(f"template is used by campaigns {used}", field="template_id")
        s.delete(t)
    return Response(status_code=204)


class PreviewIn(BaseModel):
    user: str = Field(min_length=1, max_length=256, description="Rejoin user id, dyid or CUID")
    variation_id: str | None = None
    step_index: int = Field(0, ge=0)
    channel: Channel | None = None
    skus: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Trigger products; for a cart campaign the cart to preview (else the user's cart as it is now)",
    )


class PreviewOut(BaseModel):
    channel: str
    variation_id: str
    step: str
    payload: dict[str, Any] | None
    skipped: str | None = None
    # Why a send of this step on this channel would be skipped for the user (`no_integration`,
    # `no_identifier`, `not_opted_in`, as the decision trace says); the payload is rendered anyway.
    unreachable: str | None = None


@router.post("/campaigns/{campaign_id}/render")
def render_preview(campaign_id: str, body: PreviewIn, principal: Management, state: StateDep) -> PreviewOut:
    """The payload a step would send to this user now (links are signed but record nothing)."""
    with state.store.session() as s:
        c = s.get(Campaign, campaign_id)
        if c is None or c.section_id != principal.section_id:
            raise NotFound("no such campaign", field="campaign_id")
        spec = load_spec(s, c.id, c.version)
        var = spec.variation(body.variation_id) if body.variation_id else next((v for v in spec.variations if v.steps), None)
        if var is None or not var.steps:
            raise Unprocessable("no such variation with steps", field="variation_id")
        if body.step_index >= len(var.steps):
            raise Unprocessable(f"the variation has {len(var.steps)} steps", field="step_index")
        step = var.steps[body.step_index]
        if body.channel and body.channel not in step.messages:
            raise Unprocessable("the step has no message on this channel", field="channel")
        try:
            user = find_user(s, principal.section_id, body.user)
        except AmbiguousUserRef as exc:  # a device id of one person, the CUID of another: 409 naming both
            raise Conflict(str(exc), field="user") from None
        if user is None:
            raise NotFound("no such user", field="user")
        step_channels = [c.value for c in step.messages]
        reachability = reach(s, principal.section_id, user.id, step_channels)
        channel = body.channel.value if body.channel else _channel_sent(spec, step_channels, reachability.unreachable)
        opt_in = reachability.opt_ins.get(channel)
        identifier = state.box.decrypt(opt_in.value_enc) if opt_in else ""
        unreachable = reachability.unreachable.get(channel)
        now = now_utc()
        linker = Linker(Signer(state.settings.secret_keys), state.settings.effective_public_url, "", user.id,
                        section_id=principal.section_id, issued=now)  # fmt: skip
        try:
            payload = compose_payload(
                s, section_id=principal.section_id, spec=spec, variation=var, step_index=body.step_index,
                channel=channel, user=user, identifier=identifier,
                items=_preview_items(s, principal.section_id, user, spec.type.value, body.skus),
                linker=linker, as_of=now,
            )  # fmt: skip
        except MissingRequired as err:
            return PreviewOut(
                channel=channel, variation_id=var.id, step=step.name, payload=None, skipped=str(err),
                unreachable=unreachable,
            )  # fmt: skip
        return PreviewOut(
            channel=channel, variation_id=var.id, step=step.name, payload=payload, unreachable=unreachable
        )


def _channel_sent(spec: CampaignSpec, step_channels: list[str], unreachable: Mapping[str, str]) -> str:
    """The channel a send of the step would use for the user now: the campaign's priority among the
    step's channels the user is reachable on (`unreachable`: the others, as the journey decides);
    when none is, the first of the priority the step has (its payload is still worth seeing)."""
    priority = [c.value for c in spec.channel_priority]
    chosen = choose_channel(priority, step_channels, unreachable)
    if chosen.channel is not None:
        return chosen.channel
    return next((c for c in priority if c in step_channels), step_channels[0])


def _preview_items(
    s: Session, section_id: str, user: User, campaign_type: str, skus: list[str]
) -> list[dict[str, Any]]:
    """The trigger items a preview renders: the given SKUs when there are any, for a cart campaign
    too (its items are the cart, so `skus` stand for a cart of those products: a SKU the user's
    cart holds keeps its quantity and price, any other is one of it at the catalog's price);
    without SKUs, what a journey would use (a cart campaign: the user's cart now)."""
    if campaign_type != CampaignType.CART_ABANDONMENT or not skus:
        return trigger_items(s, section_id, user, campaign_type, skus)
    in_cart = {item["sku"]: item for item in trigger_items(s, section_id, user, campaign_type, [])}
    # Any other type reads the products of the given SKUs from the catalog.
    products = trigger_items(s, section_id, user, CampaignType.PRODUCT_VIEW.value, skus)
    return [in_cart.get(product["sku"]) or {**product, "quantity": 1} for product in products]
