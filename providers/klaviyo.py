"""Klaviyo Create Event: an event on the recipient's profile that triggers a Klaviyo flow.

`Authorization: Klaviyo-API-Key <private key>`, `revision` header, JSON:API body. The send key
is the event's `unique_id`, which Klaviyo de-duplicates on: a repeat after an unknown outcome
cannot trigger the flow twice.

Event properties are the step's payload as it is, plus Rejoin's own `rejoin_campaign` and
`rejoin_step` (the `rejoin_` prefix is Rejoin's). The older `campaign` and `step` properties are
still added for flows written against them, but only when the payload has no key of that name:
a payload's own `campaign` or `step` is never overwritten.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, HttpUrl, ValidationInfo, field_validator

from providers.base import OutboundMessage, ProviderResponse
from providers.context import AdapterContext
from providers.preset import PresetConfig, accepted, answer_object, join, said_in_list


ProfileField = Literal["email", "phone_number", "external_id"]
# The profile field a channel's recipient fills when none is configured: an SMS recipient is a
# phone number, and sent as `email` Klaviyo would file it as a (bogus) address.
DEFAULT_PROFILE_FIELD: dict[str, ProfileField] = {"email": "email", "sms": "phone_number"}
# The identifier type whose values each profile field takes (the integration's `identifier_type`).
IDENTIFIER_TYPE_BY_PROFILE_FIELD: dict[str, str] = {"email": "email", "phone_number": "phone", "external_id": "custom"}


def profile_field_for(configured: ProfileField | None, channel: str) -> ProfileField:
    """The configured field, else the channel's default (a config validated without a channel)."""
    return configured or DEFAULT_PROFILE_FIELD.get(channel, "email")


def said_by_klaviyo(body: str) -> str | None:
    """Klaviyo's words in an error answer (JSON:API `errors`): each error's `code` and `detail`."""
    return said_in_list(answer_object(body).get("errors"), "code", "detail", "title")


class KlaviyoConfig(PresetConfig):
    """Validated with `context={"channel": ...}` on save, so `profile_field` gets the channel's
    default there; without a context (at send) it may stay None and `profile_field_for` decides."""

    api_key: str = Field(min_length=1, max_length=500)
    metric_name: str = Field("Rejoin Message", min_length=1, max_length=127)
    revision: str = Field("2024-10-15", pattern=r"^\d{4}-\d{2}-\d{2}(\.\w+)?$")
    profile_field: ProfileField | None = Field(None, validate_default=True)
    base_url: HttpUrl = HttpUrl("https://a.klaviyo.com")

    @field_validator("profile_field")
    @classmethod
    def _fits_channel(cls, v: ProfileField | None, info: ValidationInfo) -> ProfileField | None:
        channel = (info.context or {}).get("channel")
        if not isinstance(channel, str):
            return v
        if v == "email" and channel == "sms":
            raise ValueError("an SMS recipient is a phone number: use phone_number (or external_id), not email")
        return v or DEFAULT_PROFILE_FIELD.get(channel, "email")


class KlaviyoProvider:
    kind = "klaviyo"
    channels = ("email", "sms")
    Config = KlaviyoConfig
    honours_idempotency_key = True  # unique_id

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = KlaviyoConfig.model_validate(message.config)
        field = profile_field_for(cfg.profile_field, message.channel)
        attributes = {
            "metric": {"data": {"type": "metric", "attributes": {"name": cfg.metric_name}}},
            "profile": {"data": {"type": "profile", "attributes": {field: message.recipient}}},
            "properties": event_properties(message),
            "unique_id": message.idempotency_key,
            "time": datetime.now(UTC).replace(microsecond=0).isoformat(),
        }
        resp = await self.ctx.caller.call(
            "POST",
            join(str(cfg.base_url), "/api/events"),
            json={"data": {"type": "event", "attributes": attributes}},
            headers={
                "Authorization": f"Klaviyo-API-Key {cfg.api_key}",
                "revision": cfg.revision,
                "Content-Type": "application/vnd.api+json",
                "Accept": "application/vnd.api+json",
            },
            explain=said_by_klaviyo,
        )
        return accepted(resp, None)


def event_properties(message: OutboundMessage) -> dict[str, Any]:
    """The payload, with the campaign and step names under Rejoin's keys, and under the legacy
    `campaign` / `step` keys only where the payload does not use them itself."""
    legacy = {"campaign": message.campaign_name, "step": message.step_name}
    own = {"rejoin_campaign": message.campaign_name, "rejoin_step": message.step_name}
    return {**legacy, **message.payload, **own}
