"""Klaviyo Create Event: an event on the recipient's profile that triggers a Klaviyo flow.

`Authorization: Klaviyo-API-Key <private key>`, `revision` header, JSON:API body. The send key
is the event's `unique_id`, which Klaviyo de-duplicates on: a repeat after an unknown outcome
cannot trigger the flow twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, HttpUrl

from providers.base import OutboundMessage, ProviderResponse
from providers.context import AdapterContext
from providers.preset import PresetConfig, accepted, join


class KlaviyoConfig(PresetConfig):
    api_key: str = Field(min_length=1, max_length=500)
    metric_name: str = Field("Rejoin Message", min_length=1, max_length=127)
    revision: str = Field("2024-10-15", pattern=r"^\d{4}-\d{2}-\d{2}(\.\w+)?$")
    profile_field: Literal["email", "phone_number", "external_id"] = "email"
    base_url: HttpUrl = HttpUrl("https://a.klaviyo.com")


class KlaviyoProvider:
    kind = "klaviyo"
    channels = ("email", "sms")
    Config = KlaviyoConfig
    honours_idempotency_key = True  # unique_id

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = KlaviyoConfig.model_validate(message.config)
        attributes = {
            "metric": {"data": {"type": "metric", "attributes": {"name": cfg.metric_name}}},
            "profile": {"data": {"type": "profile", "attributes": {cfg.profile_field: message.recipient}}},
            "properties": {**message.payload, "campaign": message.campaign_name, "step": message.step_name},
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
        )
        return accepted(resp, None)
