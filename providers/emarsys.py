"""Emarsys external event trigger.

Credentials, either: the uploaded service-account JSON (`client_email`, `private_key`,
`token_uri`), which mints an access token with the JWT-bearer grant; or Emarsys' OpenID Connect
API credentials (`client_id`, `client_secret`), exchanged at `token_url` with the client
credentials grant (`client_secret_basic`). Either token is cached, refreshed before expiry and
refetched once on 401. Send:
`POST {base}/api/v3/event/{event_id}/trigger` with `key_id`, `external_id` = the user
identifier, `data` = the step payload and `trigger_id` = the send key: Emarsys processes a
repeated `trigger_id` once, so repeats after an unknown outcome cannot duplicate.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, HttpUrl, field_validator, model_validator

from providers.base import OutboundMessage, ProviderError, ProviderResponse, classify_http, said
from providers.context import AdapterContext
from providers.oauth import Fetcher, Token, cache_key, client_credentials, jwt_bearer, signing_account, with_token
from providers.preset import PresetConfig, ServiceAccount, accepted, answer_object, join, json_body

SCOPE = "https://api.emarsys.net/api/v3"


def said_by_emarsys(body: str) -> str | None:
    """Emarsys' words in an error answer: its `replyCode` and `replyText`."""
    answer = answer_object(body)
    return said(answer.get("replyCode"), answer.get("replyText"))


class EmarsysConfig(PresetConfig):
    service_account: ServiceAccount | None = None
    client_id: str | None = Field(None, max_length=500)
    client_secret: str | None = Field(None, max_length=2000)
    token_url: HttpUrl = HttpUrl("https://auth.emarsys.net/oauth2/token")
    event_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_-]+$")
    key_id: str = Field("3", max_length=64)
    scope: str = Field(SCOPE, max_length=500)
    base_url: HttpUrl = HttpUrl("https://api.emarsys.net")

    _signing_key = field_validator("service_account")(signing_account)

    @model_validator(mode="after")
    def _credentials(self) -> EmarsysConfig:
        if self.service_account is None and not (self.client_id and self.client_secret):
            raise ValueError("service_account, or client_id and client_secret, are required")
        return self

    def credential_parts(self) -> tuple[str, ...]:
        if self.service_account is not None:
            return (str(self.service_account.get("client_email")), str(self.service_account["private_key"]))
        return (str(self.token_url), str(self.client_id), str(self.client_secret))



class EmarsysProvider:
    kind = "emarsys"
    channels = ("email",)
    Config = EmarsysConfig
    honours_idempotency_key = True  # trigger_id

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    def _fetcher(self, cfg: EmarsysConfig) -> Fetcher:
        async def fetch() -> Token:
            if cfg.service_account is not None:
                return await jwt_bearer(self.ctx.caller, cfg.service_account, cfg.scope)
            return await client_credentials(
                self.ctx.caller,
                token_url=str(cfg.token_url),
                client_id=str(cfg.client_id),
                client_secret=str(cfg.client_secret),
            )

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
        key = cache_key(message.integration_id, *cfg.credential_parts())

        async def post(token: Token) -> ProviderResponse:
            headers = {"Authorization": f"Bearer {token.value}"}
            return await self.ctx.caller.request("POST", url, json=body, headers=headers)

        resp = await with_token(self.ctx.tokens, key, self._fetcher(cfg), post)
        error = classify_http(resp.status, resp.body, resp.headers, said_by_emarsys)
        if error is not None:
            raise error
        answer = json_body(resp)
        if isinstance(answer, dict) and answer.get("replyCode", 0) != 0:
            raise ProviderError(f"rejected: {answer.get('replyText')}", retryable=False, status=resp.status,
                                body=resp.body, headers=resp.headers)  # fmt: skip
        return accepted(resp, None)
