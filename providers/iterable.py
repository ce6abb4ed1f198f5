"""Iterable `POST /api/email/target`: an API-triggered campaign for one recipient.

`Api-Key` header; body `campaignId`, `recipientEmail` (or `recipientUserId` when the integration
identifies users by a custom id), `dataFields` = the step's payload. No idempotency key exists,
so the send key goes into `metadata` (echoed in Iterable's webhooks) for tracing duplicates.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, HttpUrl

from providers.base import OutboundMessage, ProviderError, ProviderResponse, said
from providers.context import AdapterContext
from providers.preset import PresetConfig, accepted, answer_object, join, json_body


def said_by_iterable(body: str) -> str | None:
    """Iterable's words in an error answer: its `code` and `msg`."""
    answer = answer_object(body)
    return said(answer.get("code"), answer.get("msg"))


class IterableConfig(PresetConfig):
    api_key: str = Field(min_length=1, max_length=500)
    campaign_id: int = Field(gt=0)
    recipient_field: Literal["recipientEmail", "recipientUserId"] = "recipientEmail"
    base_url: HttpUrl = HttpUrl("https://api.iterable.com")


class IterableProvider:
    kind = "iterable"
    channels = ("email",)
    Config = IterableConfig
    honours_idempotency_key = False

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = IterableConfig.model_validate(message.config)
        body = {
            "campaignId": cfg.campaign_id,
            cfg.recipient_field: message.recipient,
            "dataFields": message.payload,
            "metadata": {"rejoin_send_key": message.idempotency_key},
        }
        resp = await self.ctx.caller.call(
            "POST", join(str(cfg.base_url), "/api/email/target"), json=body, headers={"Api-Key": cfg.api_key},
            explain=said_by_iterable,
        )
        answer = json_body(resp)
        if isinstance(answer, dict) and answer.get("code") not in (None, "Success"):
            raise ProviderError(f"rejected: {answer.get('code')}: {answer.get('msg')}", retryable=False,
                                status=resp.status, body=resp.body, headers=resp.headers)  # fmt: skip
        return accepted(resp, None)
