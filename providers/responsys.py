"""Oracle Responsys: password login for a token, then trigger email with the campaign in the path.

Login: `POST {login_url}/rest/api/v1.3/auth/token`, form `user_name`, `password`,
`auth_type=password`; the answer's `authToken` goes raw in `Authorization` and its `endPoint`
is the base URL for the send. Tokens live 3 hours; they are cached (refreshed early) and
refetched once on a 401. The send URL is `endpoint_path` with `${dyCampaignName}` replaced by
the campaign's name. Responsys answers 200 with one result per recipient: `success: false` is
a permanent failure carrying Responsys' `errorMessage`.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, HttpUrl

from providers.base import OutboundMessage, ProviderError, ProviderResponse, classify_http, said
from providers.context import AdapterContext
from providers.oauth import Fetcher, Token, TokenRejected, cache_key, with_token
from providers.preset import PresetConfig, accepted, answer_object, join, json_body

TOKEN_LIFETIME = 3 * 3600.0


def said_by_responsys(body: str) -> str | None:
    """Responsys' words in an error answer: its `errorCode` and `detail` (or `title`)."""
    answer = answer_object(body)
    detail = answer.get("detail") if isinstance(answer.get("detail"), str) and answer["detail"].strip() else None
    return said(answer.get("errorCode"), detail or answer.get("title"))


class ResponsysConfig(PresetConfig):
    login_url: HttpUrl = HttpUrl("https://login5.responsys.net")
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=500)
    endpoint_path: str = Field("/rest/api/v1.3/campaigns/${dyCampaignName}/email", max_length=500)
    recipient_field: Literal["emailAddress", "mobileNumber", "customerId", "recipientId"] = "emailAddress"
    list_folder: str | None = Field(None, max_length=200)
    list_name: str | None = Field(None, max_length=200)


class ResponsysProvider:
    kind = "responsys"
    channels = ("email",)
    Config = ResponsysConfig
    honours_idempotency_key = False

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    def _fetcher(self, cfg: ResponsysConfig) -> Fetcher:
        async def login() -> Token:
            form = {"user_name": cfg.username, "password": cfg.password, "auth_type": "password"}
            resp = await self.ctx.caller.request(
                "POST", join(str(cfg.login_url), "/rest/api/v1.3/auth/token"), data=form
            )
            error = classify_http(resp.status, resp.body, resp.headers)
            if error is not None and error.retryable:
                raise error
            answer = json_body(resp)
            if error is not None or not isinstance(answer, dict) or "authToken" not in answer:
                code = answer.get("errorCode", "") if isinstance(answer, dict) else ""
                raise TokenRejected(f"Responsys login refused ({resp.status}) {code}".strip())
            return Token(str(answer["authToken"]), TOKEN_LIFETIME, {"endPoint": str(answer.get("endPoint") or "")})

        return login

    def _key(self, message: OutboundMessage, cfg: ResponsysConfig) -> str:
        return cache_key(message.integration_id, str(cfg.login_url), cfg.username, cfg.password)

    async def validate(self, config: dict[str, Any]) -> None:
        await self._fetcher(ResponsysConfig.model_validate(config))()

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = ResponsysConfig.model_validate(message.config)
        path = cfg.endpoint_path.replace("${dyCampaignName}", quote(message.campaign_name, safe=""))
        recipient: dict[str, Any] = {cfg.recipient_field: message.recipient, "emailFormat": "HTML_FORMAT"}
        if cfg.list_name:
            recipient["listName"] = {"folderName": cfg.list_folder or "", "objectName": cfg.list_name}
        optional = [{"name": str(k), "value": v if isinstance(v, str) else str(v)} for k, v in message.payload.items()]
        body = {"recipientData": [{"recipient": recipient, "optionalData": optional}]}
        key = self._key(message, cfg)
        resp = await with_token(self.ctx.tokens, key, self._fetcher(cfg), lambda t: self._post(t, path, body))
        error = classify_http(resp.status, resp.body, resp.headers, said_by_responsys)
        if error is not None:
            raise error
        results = json_body(resp)
        first = results[0] if isinstance(results, list) and results else {}
        if isinstance(first, dict) and first.get("success") is False:
            raise ProviderError(f"rejected: {first.get('errorMessage')}", retryable=False, status=resp.status,
                                body=resp.body, headers=resp.headers)  # fmt: skip
        rid = first.get("recipientId") if isinstance(first, dict) else None
        return accepted(resp, str(rid) if rid is not None else None)

    async def _post(self, token: Token, path: str, body: dict[str, Any]) -> ProviderResponse:
        base = token.extra.get("endPoint") or ""
        return await self.ctx.caller.request(
            "POST", join(base, path), json=body, headers={"Authorization": token.value}
        )
