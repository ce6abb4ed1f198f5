"""Web Push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payload encryption (RFC 8291).

The user identifier is the browser's subscription JSON (`endpoint`, `keys.p256dh`,
`keys.auth`), stored encrypted like any identifier. Each message is encrypted for that
subscription with a fresh ephemeral key and salt (`http_ece`), and signed with the
integration's VAPID key: `Authorization: vapid t=<ES256 JWT>, k=<public key>`, the JWT's `aud`
being the endpoint's origin. `Topic` is derived from the send key, so a repeated send replaces
the still-queued first one instead of showing twice. 404/410 mean the subscription is gone
(a permanent failure). The endpoint is the shopper's choice, so the operator's private allow-list
(meant for relays an admin configured) does not apply to it (`shopper_caller`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from pydantic import Field, field_validator

from domain.identifiers import strict_b64url
from providers.base import (
    ConfigurationError,
    OutboundMessage,
    ProviderError,
    ProviderResponse,
    current_redactor,
    gone_if,
    redacting,
    said,
)
from providers.context import AdapterContext
from providers.http import HttpCaller
from providers.preset import PresetConfig, accepted, answer_object


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


RAW_KEY_BYTES = 32  # a P-256 private scalar
# RFC 8291: one aes128gcm record of 4096 bytes holds 4096 - 86 (header) - 16 (tag) - 1 (padding delimiter).
MAX_PLAINTEXT = 3993
# The order of the P-256 group: a private scalar is 1 .. n-1 (SEC 1 3.2.1).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def load_vapid_key(value: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key as PEM, or as the base64url raw 32-byte scalar web-push tools print."""
    try:
        key = _pem_key(value) if "BEGIN" in value else _raw_key(value.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError("vapid_private_key is not a P-256 private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigurationError("vapid_private_key must be a P-256 (prime256v1) key")
    return key


def _pem_key(value: str) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(value.encode(), password=None)


def _raw_key(value: str) -> ec.EllipticCurvePrivateKey:
    # Strict base64url of exactly 32 bytes: the lenient decoder drops stray characters, and any
    # short string ("notakey") would otherwise become a small, guessable scalar.
    try:
        raw = strict_b64url(value)
    except ValueError:
        raise ConfigurationError("vapid_private_key must be PEM or base64url") from None
    if len(raw) != RAW_KEY_BYTES:
        raise ConfigurationError(f"a raw vapid_private_key is {RAW_KEY_BYTES} bytes (base64url), not {len(raw)}")
    scalar = int.from_bytes(raw, "big")
    if not 0 < scalar < P256_ORDER:
        raise ConfigurationError("vapid_private_key is not a P-256 private key (scalar out of range)")
    return ec.derive_private_key(scalar, ec.SECP256R1())


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64url(raw)


def shopper_caller(caller: HttpCaller) -> HttpCaller:
    """`caller` without the operator's private allow-list (`REJOIN_PRIVATE_URL_ALLOWLIST`): that list
    admits relays an admin configured, while a Web Push endpoint is whatever the shopper's browser (or
    anyone holding the ingestion key) sent. Allowing private URLs altogether (local dev, tests) still
    applies; the same pooled transport is used."""
    if not caller.guard.allowed_targets:
        return caller
    return HttpCaller(caller.transport, replace(caller.guard, allowed_targets=frozenset()))


def said_by_push_service(body: str) -> str | None:
    """A push service's words in an error answer: Mozilla's `error` and `message`, Apple's `reason`
    (Google's is plain text, which leads the error as it is)."""
    answer = answer_object(body)
    return said(answer.get("error"), answer.get("message")) or said(answer.get("reason"))


class WebPushConfig(PresetConfig):
    vapid_private_key: str = Field(min_length=1, max_length=5000)
    subject: str = Field(pattern=r"^(mailto:|https:).+", max_length=300)
    ttl: int = Field(86400, ge=0, le=2_419_200)
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"

    @field_validator("vapid_private_key")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            load_vapid_key(v)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return v


class WebPushProvider:
    kind = "webpush"
    channels = ("web_push",)
    Config = WebPushConfig
    honours_idempotency_key = False

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        import http_ece  # type: ignore[import-untyped]
        import jwt

        cfg = WebPushConfig.model_validate(message.config)
        try:
            sub = json.loads(message.recipient)
            endpoint = str(sub["endpoint"])
            ua_public = unb64url(sub["keys"]["p256dh"])
            auth_secret = unb64url(sub["keys"]["auth"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError("the recipient is not a Web Push subscription (endpoint, keys)") from exc
        vapid = load_vapid_key(cfg.vapid_private_key)
        plaintext = json.dumps(message.payload, separators=(",", ":")).encode()
        if len(plaintext) > MAX_PLAINTEXT:
            # Push services take one 4096-byte record and answer 413 to more; a longer body would
            # be encrypted as several records, which no browser accepts either.
            raise ProviderError(
                f"Web Push payload is {len(plaintext)} bytes; push services accept at most {MAX_PLAINTEXT}"
                " (shorten the title, body or data)",
                retryable=False,
            )
        body = http_ece.encrypt(
            plaintext,
            salt=os.urandom(16),
            private_key=ec.generate_private_key(ec.SECP256R1()),  # fresh per message (RFC 8291)
            dh=ua_public,
            auth_secret=auth_secret,
            version="aes128gcm",
        )
        parts = urlsplit(endpoint)
        claims: dict[str, Any] = {"aud": f"{parts.scheme}://{parts.netloc}", "exp": int(time.time()) + 12 * 3600,
                                  "sub": cfg.subject}  # fmt: skip
        token = jwt.encode(claims, vapid, algorithm="ES256")
        headers = {
            "TTL": str(cfg.ttl),
            "Urgency": cfg.urgency,
            "Topic": b64url(hashlib.sha256(message.idempotency_key.encode()).digest())[:32],
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": f"vapid t={token}, k={public_key_b64(vapid)}",
        }
        # The signed token is a credential for 12 h (any push to this service as the shop): masked like
        # the integration's secrets in the answer and in the errors of a service echoing its request.
        redactor = current_redactor().adding(token)
        with redacting(redactor):
            try:
                resp = await shopper_caller(self.ctx.caller).call(
                    "POST", endpoint, content=body, headers=headers, explain=said_by_push_service
                )
            except ProviderError as err:
                raise gone_if(err, err.status in (404, 410)) from None  # the subscription expired or was revoked
        return accepted(redactor.answer(resp), resp.headers.get("location"))
