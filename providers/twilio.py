"""Twilio Programmable Messaging: form-encoded `Messages.json`, Basic auth with SID:token.

The sender is a number / alphanumeric sender id (`From`) or a Messaging Service
(`MessagingServiceSid`). The SMS text is the payload's `body` (or `Body`, or `text`): a payload
with none of them is a configuration error before any call (before, its raw JSON went out as the
SMS, which Twilio accepts and the customer reads). Twilio has no idempotency key for message
creation, so repeats after an unknown outcome are flagged.

Twilio's error codes that say the number itself will never take an SMS mark the error
`recipient_gone` (delivery opts the number out, like a dead push token): 21610, the recipient
replied STOP (Twilio refuses every message to it until they reply START, which reaches the shop
as a fresh opt-in); 21211, the 'To' value is not a valid phone number; 21614, it is not a mobile
number (a landline cannot receive SMS). Other codes (21408 region not enabled, 21606 bad sender,
...) are about the account or the message and never opt anyone out.
"""

from __future__ import annotations

import base64
from typing import Any

from pydantic import Field, HttpUrl, model_validator

from providers.base import ConfigurationError, OutboundMessage, ProviderResponse, classify_http, gone_if, said
from providers.context import AdapterContext
from providers.preset import PresetConfig, accepted, answer_object, join, json_body, not_the_vendors_answer

# Twilio error codes that are permanent for the 'To' number (see the module docstring).
RECIPIENT_GONE_CODES = frozenset({21610, 21211, 21614})


def recipient_gone(answer: Any) -> bool:
    """Whether Twilio's error answer (parsed JSON) names a code that is permanent for the number."""
    return isinstance(answer, dict) and answer.get("code") in RECIPIENT_GONE_CODES


def said_by_twilio(body: str) -> str | None:
    """Twilio's words in an error answer: its error `code` and `message`."""
    answer = answer_object(body)
    return said(answer.get("code"), answer.get("message"))


TEXT_KEYS = ("body", "Body", "text")


def sms_text(payload: dict[str, Any]) -> str:
    """The SMS text: the first non-empty string of `TEXT_KEYS`. Without one the message cannot be
    sent as meant (like SendGrid without template or subject), so no call is made."""
    for key in TEXT_KEYS:
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    raise ConfigurationError("the SMS has no text: give the payload a non-empty 'body' (or 'text')")


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
        form = {"To": message.recipient, "Body": sms_text(message.payload)}
        if cfg.messaging_service_sid:
            form["MessagingServiceSid"] = cfg.messaging_service_sid
        else:
            form["From"] = str(cfg.sender)
        if cfg.status_callback:
            form["StatusCallback"] = str(cfg.status_callback)
        auth = base64.b64encode(f"{cfg.account_sid}:{cfg.auth_token}".encode()).decode()
        resp = await self.ctx.caller.request(
            "POST",
            join(str(cfg.base_url), f"/2010-04-01/Accounts/{cfg.account_sid}/Messages.json"),
            data=form,
            headers={"Authorization": f"Basic {auth}", "Accept": "application/json"},
        )
        answer = json_body(resp)
        error = classify_http(resp.status, resp.body, resp.headers, said_by_twilio)
        if error is not None:
            raise gone_if(error, recipient_gone(answer))
        sid = answer.get("sid") if isinstance(answer, dict) else None
        if not sid:
            raise not_the_vendors_answer("Twilio", resp.status, "message sid")
        return accepted(resp, str(sid))
