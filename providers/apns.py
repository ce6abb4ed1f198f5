"""Apple Push Notification service: token-based (ES256 JWT) provider API over HTTP/2.

`POST {base}/3/device/{device token}` with `authorization: bearer <JWT>` (header `kid` = Key ID,
claims `iss` = Team ID, `iat`), `apns-topic` (bundle id), `apns-push-type`, `apns-priority`.
The JWT is made locally and cached in the token cache for 40 minutes (Apple wants a refresh at
most every 20 and at least every 60 minutes). `apns-id` is derived from the send key so a
repeat carries the same id; `apns-collapse-id` makes a duplicate replace the shown
notification rather than add a second one. APNs requires HTTP/2: the worker gives this adapter
an HTTP/2 client (ALPN over TLS).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import Field, HttpUrl, field_validator

from providers.base import ConfigurationError, OutboundMessage, ProviderResponse, classify_http, gone_if, said
from providers.context import AdapterContext
from providers.oauth import Fetcher, Token, cache_key, with_token
from providers.preset import PresetConfig, accepted, answer_object, join

JWT_LIFETIME = 40 * 60.0

DEAD_TOKEN_REASONS = ("BadDeviceToken", "DeviceTokenNotForTopic")
# Device tokens are hex (32 bytes today; Apple says the length may grow). Anything else would be
# spliced into the request path, so it is refused before a request is made.
DEVICE_TOKEN = re.compile(r"^[0-9A-Fa-f]{1,400}$")


def p256_key_problem(pem: str) -> str | None:
    """Why `pem` cannot sign APNs provider tokens (ES256), or None when it can."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "not a PEM private key (the .p8 file from Apple)"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        return "must be a P-256 (ES256) key, the .p8 file from Apple"
    return None


def device_path(token: str) -> str:
    if not DEVICE_TOKEN.match(token):
        raise ConfigurationError("the recipient is not an APNs device token (hex digits expected)")
    return f"/3/device/{token}"


class ApnsConfig(PresetConfig):
    team_id: str = Field(pattern=r"^[A-Z0-9]{10}$")
    key_id: str = Field(pattern=r"^[A-Z0-9]{10}$")
    private_key: str = Field(min_length=1, max_length=10_000, description=".p8 key (PEM)")
    topic: str = Field(min_length=1, max_length=255, description="the app's bundle id")
    push_type: Literal["alert", "background"] = "alert"
    priority: Literal[5, 10] = 10
    base_url: HttpUrl = HttpUrl("https://api.push.apple.com")

    @field_validator("private_key")
    @classmethod
    def _signing_key(cls, value: str) -> str:
        problem = p256_key_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def apns_body(payload: dict[str, Any]) -> dict[str, Any]:
    if "aps" in payload:
        return payload
    alert = {k: payload[k] for k in ("title", "subtitle", "body") if k in payload}
    extra = {k: v for k, v in payload.items() if k not in alert}
    return {"aps": {"alert": alert}, **extra}


def said_by_apns(body: str) -> str | None:
    """APNs' words in an error answer: its `reason` (BadDeviceToken, Unregistered...)."""
    return said(answer_object(body).get("reason"))


def _token_refused(resp: ProviderResponse) -> bool:
    # APNs answers 403 ExpiredProviderToken / InvalidProviderToken instead of 401.
    return resp.status == 403 and "ProviderToken" in resp.body


class ApnsProvider:
    kind = "apns"
    channels = ("app_push",)
    Config = ApnsConfig
    honours_idempotency_key = False

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    def _signer(self, cfg: ApnsConfig) -> Fetcher:
        async def sign() -> Token:
            import jwt

            try:
                value = jwt.encode(
                    {"iss": cfg.team_id, "iat": int(time.time())},
                    cfg.private_key,
                    algorithm="ES256",
                    headers={"kid": cfg.key_id},
                )
            except (ValueError, TypeError, jwt.PyJWTError) as exc:  # PyJWT: InvalidKeyError for a wrong type
                raise ConfigurationError("APNs private_key is not a valid P-256 (.p8) key") from exc
            return Token(value, JWT_LIFETIME)

        return sign

    async def validate(self, config: dict[str, Any]) -> None:
        await self._signer(ApnsConfig.model_validate(config))()

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = ApnsConfig.model_validate(message.config)
        url = join(str(cfg.base_url), device_path(message.recipient))
        apns_id = str(uuid.uuid5(uuid.NAMESPACE_URL, message.idempotency_key))
        headers = {
            "apns-topic": cfg.topic,
            "apns-push-type": cfg.push_type,
            "apns-priority": str(cfg.priority if cfg.push_type == "alert" else 5),
            "apns-id": apns_id,
            "apns-collapse-id": hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:64],
        }
        body = apns_body(message.payload)
        key = cache_key(message.integration_id, cfg.team_id, cfg.key_id, cfg.private_key)

        async def post(token: Token) -> ProviderResponse:
            return await self.ctx.h2_caller.request(
                "POST", url, json=body, headers={**headers, "authorization": f"bearer {token.value}"}
            )

        resp = await with_token(self.ctx.tokens, key, self._signer(cfg), post, _token_refused)
        error = classify_http(resp.status, resp.body, resp.headers, said_by_apns)
        if error is not None:
            # 410 Unregistered; 400 BadDeviceToken / DeviceTokenNotForTopic: the token is dead here.
            dead = resp.status == 410 or (resp.status == 400 and any(r in resp.body for r in DEAD_TOKEN_REASONS))
            raise gone_if(error, dead)
        return accepted(resp, resp.headers.get("apns-id", apns_id))
