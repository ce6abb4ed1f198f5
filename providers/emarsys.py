"""Emarsys external event trigger, authenticated with an uploaded service-account file.

The service-account JSON (`client_email`, `private_key`, `token_uri`) mints an access token
with the JWT-bearer grant (cached, refreshed before expiry, refetched once on 401). Send:
`POST {base}/api/v3/event/{event_id}/trigger` with `key_id`, `external_id` = the user
identifier, `data` = the step payload and `trigger_id` = the send key: Emarsys processes a
repeated `trigger_id` once, so repeats after an unknown outcome cannot duplicate.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, HttpUrl, field_validator

from providers.base import OutboundMessage, ProviderError, ProviderResponse, classify_http
from providers.context import AdapterContext
from providers.oauth import Fetcher, Token, cache_key, jwt_bearer, with_token
from providers.preset import PresetConfig, accepted, join, json_body

SCOPE = "https://api.emarsys.net/api/v3"


class EmarsysConfig(PresetConfig):
    service_account: dict[str, Any]
    event_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_-]+$")
    key_id: str = Field("3", max_length=64)
    scope: str = Field(SCOPE, max_length=500)
    base_url: HttpUrl = HttpUrl("https://api.emarsys.net")

    @field_validator("service_account")
    @classmethod
    def _account(cls, v: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in ("client_email", "private_key", "token_uri") if not v.get(k)]
        if missing:
            raise ValueError(f"service account file lacks {', '.join(missing)}")
        return v


class EmarsysProvider:
    kind = "emarsys"
    channels = ("email",)
    Config = EmarsysConfig
    honours_idempotency_key = True  # trigger_id

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    def _fetcher(self, cfg: EmarsysConfig) -> Fetcher:
        async def fetch() -> Token:
            return await jwt_bearer(self.ctx.caller, cfg.service_account, cfg.scope)

        return fetch

    async def validate(self, config: dict[str, Any]) -> None:
        await self._fetcher(EmarsysConfig.model_validate(config))()

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = EmarsysConfig.model_validate(message.config)
        body = {
            "key_id": cfg.key_id,
            "external_id": message.recipient,
            "trigger_id": message.idempotency_key,
            "data": message.payload,
        }
        url = join(str(cfg.base_url), f"/api/v3/event/{cfg.event_id}/trigger")
        key = cache_key(message.integration_id, cfg.service_account.get("client_email", ""), cfg.service_account["private_key"])

        async def post(token: Token) -> ProviderResponse:
            headers = {"Authorization": f"Bearer {token.value}"}
            return await self.ctx.caller.request("POST", url, json=body, headers=headers)

        resp = await with_token(self.ctx.tokens, key, self._fetcher(cfg), post)
        error = classify_http(resp.status, resp.body, resp.headers)
        if error is not None:
            raise error
        answer = json_body(resp)
        if isinstance(answer, dict) and answer.get("replyCode", 0) != 0:
            raise ProviderError(f"rejected: {answer.get('replyText')}", retryable=False, status=resp.status,
                                body=resp.body[:2000], headers=resp.headers)  # fmt: skip
        return accepted(resp, None)
