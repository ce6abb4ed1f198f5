"""SendGrid v3 Mail Send: a dynamic template filled with the step's payload.

POST {base}/v3/mail/send, `Authorization: Bearer <api key>`. The payload becomes
`dynamic_template_data` (a payload with its own `template_id` / `dynamic_template_data` keys
overrides the configured template). SendGrid has no idempotency key: the send key travels in
`custom_args` so a possible duplicate can be traced in SendGrid's activity feed.

SendGrid's 429 carries no Retry-After, only `X-RateLimit-Reset` (unix epoch seconds when the
limit resets): read here as the Retry-After, so the retry waits for the reset rather than a blind
back-off. Only here: other vendors send the same header name meaning seconds from now.
"""

from __future__ import annotations

from pydantic import Field, HttpUrl

from providers.base import OutboundMessage, ProviderError, ProviderResponse, classify_http, parse_rate_limit_reset
from providers.context import AdapterContext
from providers.preset import PresetConfig, accepted, join


def with_reset_wait(error: ProviderError) -> ProviderError:
    """A 429 without Retry-After waits until SendGrid's `X-RateLimit-Reset` (when it has one)."""
    if error.status == 429 and error.retry_after is None:
        error.retry_after = parse_rate_limit_reset(error.headers.get("x-ratelimit-reset"))
    return error


class SendGridConfig(PresetConfig):
    api_key: str = Field(min_length=1, max_length=500)
    from_email: str = Field(min_length=3, max_length=320)
    from_name: str | None = Field(None, max_length=200)
    template_id: str | None = Field(None, max_length=100)
    base_url: HttpUrl = HttpUrl("https://api.sendgrid.com")


class SendGridProvider:
    kind = "sendgrid"
    channels = ("email",)
    Config = SendGridConfig
    honours_idempotency_key = False

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = SendGridConfig.model_validate(message.config)
        payload = dict(message.payload)
        template_id = payload.pop("template_id", None) or cfg.template_id
        data = payload.pop("dynamic_template_data", None) or payload
        sender: dict[str, str] = {"email": cfg.from_email}
        if cfg.from_name:
            sender["name"] = cfg.from_name
        body: dict[str, object] = {
            "personalizations": [
                {
                    "to": [{"email": message.recipient}],
                    "dynamic_template_data": data,
                    "custom_args": {"rejoin_send_key": message.idempotency_key},
                }
            ],
            "from": sender,
        }
        if template_id:
            body["template_id"] = template_id
        resp = await self.ctx.caller.request(
            "POST",
            join(str(cfg.base_url), "/v3/mail/send"),
            json=body,
            headers={"Authorization": f"Bearer {cfg.api_key}"},
        )
        error = classify_http(resp.status, resp.body, resp.headers)
        if error is not None:
            raise with_reset_wait(error)
        return accepted(resp, resp.headers.get("x-message-id"))
