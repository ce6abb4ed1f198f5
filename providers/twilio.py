"""Twilio Programmable Messaging: form-encoded `Messages.json`, Basic auth with SID:token.

The sender is a number / alphanumeric sender id (`From`) or a Messaging Service
(`MessagingServiceSid`). The SMS text is the payload's `body` (or `text`). Twilio has no
idempotency key for message creation, so repeats after an unknown outcome are flagged.
"""

from __future__ import annotations

import base64

from pydantic import Field, HttpUrl, model_validator

from providers.base import OutboundMessage, ProviderResponse
from providers.context import AdapterContext
from providers.preset import PresetConfig, accepted, join, json_body, text_of


class TwilioConfig(PresetConfig):
    account_sid: str = Field(pattern=r"^AC[0-9a-zA-Z]{8,64}$")
    auth_token: str = Field(min_length=1, max_length=500)
    sender: str | None = Field(None, max_length=64, description="From: number or alphanumeric sender id")
    messaging_service_sid: str | None = Field(None, pattern=r"^MG[0-9a-zA-Z]{8,64}$")
    status_callback: HttpUrl | None = None
    base_url: HttpUrl = HttpUrl("https://api.twilio.com")

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioConfig:
        if not self.sender and not self.messaging_service_sid:
            raise ValueError("sender or messaging_service_sid is required")
        return self


class TwilioProvider:
    kind = "twilio"
    channels = ("sms",)
    Config = TwilioConfig
    honours_idempotency_key = False

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = TwilioConfig.model_validate(message.config)
        form = {"To": message.recipient, "Body": text_of(message.payload, "body", "Body", "text")}
        if cfg.messaging_service_sid:
            form["MessagingServiceSid"] = cfg.messaging_service_sid
        else:
            form["From"] = str(cfg.sender)
        if cfg.status_callback:
            form["StatusCallback"] = str(cfg.status_callback)
        auth = base64.b64encode(f"{cfg.account_sid}:{cfg.auth_token}".encode()).decode()
        resp = await self.ctx.caller.call(
            "POST",
            join(str(cfg.base_url), f"/2010-04-01/Accounts/{cfg.account_sid}/Messages.json"),
            data=form,
            headers={"Authorization": f"Basic {auth}", "Accept": "application/json"},
        )
        answer = json_body(resp)
        return accepted(resp, answer.get("sid") if isinstance(answer, dict) else None)
