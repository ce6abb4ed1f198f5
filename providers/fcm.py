"""Firebase Cloud Messaging HTTP v1 with service-account credentials.

The service-account JSON mints an OAuth2 access token (RS256 JWT-bearer grant against the
file's `token_uri`, scope firebase.messaging), cached and refreshed before expiry, refetched
once on 401. Send: `POST {base}/v1/projects/{project_id}/messages:send` with `message.token` =
the device's registration token. A payload with `title`/`body` becomes the notification; FCM's
own keys (`notification`, `data`, `android`, `apns`, `webpush`, `fcm_options`) pass through;
`data` values are stringified because FCM accepts only string maps. FCM has no idempotency
key: repeats after an unknown outcome are flagged.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, HttpUrl

from providers.base import OutboundMessage, ProviderResponse, classify_http, gone_if
from providers.context import AdapterContext
from providers.oauth import Fetcher, Token, cache_key, jwt_bearer, with_token
from providers.preset import PresetConfig, ServiceAccount, accepted, join, json_body

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
PASSTHROUGH = ("notification", "data", "android", "apns", "webpush", "fcm_options")


class FcmConfig(PresetConfig):
    service_account: ServiceAccount
    project_id: str | None = Field(None, max_length=200, description="default: the service account's project_id")
    base_url: HttpUrl = HttpUrl("https://fcm.googleapis.com")



def fcm_message(token: str, payload: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"token": token}
    for key in PASSTHROUGH:
        if key in payload:
            message[key] = payload[key]
    if "notification" not in message and ("title" in payload or "body" in payload):
        message["notification"] = {k: str(payload[k]) for k in ("title", "body", "image") if k in payload}
    if "data" in message:
        message["data"] = {
            str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in message["data"].items()
        }
    return message


class FcmProvider:
    kind = "fcm"
    channels = ("app_push",)
    Config = FcmConfig
    honours_idempotency_key = False

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    def _fetcher(self, cfg: FcmConfig) -> Fetcher:
        async def fetch() -> Token:
            return await jwt_bearer(self.ctx.caller, cfg.service_account, SCOPE)

        return fetch

    async def validate(self, config: dict[str, Any]) -> None:
        await self._fetcher(FcmConfig.model_validate(config))()

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = FcmConfig.model_validate(message.config)
        project = cfg.project_id or cfg.service_account.get("project_id") or ""
        url = join(str(cfg.base_url), f"/v1/projects/{project}/messages:send")
        body = {"message": fcm_message(message.recipient, message.payload)}
        account = cfg.service_account
        key = cache_key(message.integration_id, str(account.get("client_email")), str(account["private_key"]))

        async def post(token: Token) -> ProviderResponse:
            headers = {"Authorization": f"Bearer {token.value}"}
            return await self.ctx.caller.request("POST", url, json=body, headers=headers)

        resp = await with_token(self.ctx.tokens, key, self._fetcher(cfg), post)
        error = classify_http(resp.status, resp.body, resp.headers)
        if error is not None:
            # UNREGISTERED (404): the app instance is gone; 400 naming the registration token:
            # it was never valid. Other 400s are about the message, not the token.
            raise gone_if(error, resp.status == 404 or (resp.status == 400 and "registration token" in resp.body))
        answer = json_body(resp)
        return accepted(resp, answer.get("name") if isinstance(answer, dict) else None)
