"""Firebase Cloud Messaging HTTP v1 with service-account credentials.

The service-account JSON mints an OAuth2 access token (RS256 JWT-bearer grant against the
file's `token_uri`, scope firebase.messaging), cached and refreshed before expiry, refetched
once on 401. Send: `POST {base}/v1/projects/{project_id}/messages:send` with `message.token` =
the device's registration token. A payload with `title`/`body` becomes the notification; FCM's
own keys (`notification`, `data`, `android`, `apns`, `webpush`, `fcm_options`) pass through;
`data` values are stringified because FCM accepts only string maps. The payload's
`trackingData` (`${Push tracking data}`, `{"rjt": token}`) is not an FCM key: its token travels as
`data.rjt`, which the app echoes as `{"rjt": data.rjt}` on click (docs/messages.md, "Push"). FCM
has no idempotency key: repeats after an unknown outcome are flagged.

Only FCM's own word that the token is dead opts it out: an `UNREGISTERED` error code, or a 400
INVALID_ARGUMENT about the registration token. A bare 404 (a wrong project, a bad URL) does not.
A 401 THIRD_PARTY_AUTH_ERROR (the project's APNs or web push credentials are bad) is a permanent
failure of the send, without refetching the access token (`_token_refused`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import Field, HttpUrl, ValidationError, ValidationInfo, field_validator

from providers.base import ConfigurationError, OutboundMessage, ProviderResponse, classify_http, gone_if, said
from providers.context import AdapterContext
from providers.oauth import Fetcher, Token, cache_key, jwt_bearer, signing_account, with_token
from providers.preset import PresetConfig, ServiceAccount, accepted, join, json_body, not_the_vendors_answer

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
PASSTHROUGH = ("notification", "data", "android", "apns", "webpush", "fcm_options")
TRACKING_KEY = "rjt"  # the data key carrying the push tracking token (the app echoes it on click)
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
# FCM refuses (400 INVALID_ARGUMENT) `data` keys it reserves, and a message whose notification and
# data exceed 4096 bytes: checked before the call, as Web Push checks its own limit.
RESERVED_DATA_KEYS = frozenset({"from", "message_type", "collapse_key"})
RESERVED_DATA_PREFIXES = ("google", "gcm")
MAX_PAYLOAD_BYTES = 4096
# Google project ids (also legacy "example.com:name"): it is a path segment, so no "/", "?", "#" or "%".
PROJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]{0,199}$")


class FcmConfig(PresetConfig):
    service_account: ServiceAccount
    project_id: str | None = Field(
        None, max_length=200, validate_default=True, description="default: the service account's project_id"
    )
    base_url: HttpUrl = HttpUrl("https://fcm.googleapis.com")

    _signing_key = field_validator("service_account")(signing_account)

    @field_validator("project_id")
    @classmethod
    def _project(cls, value: str | None, info: ValidationInfo) -> str | None:
        account = info.data.get("service_account")
        if account is None:  # the service account itself was refused; that error is reported
            return value
        project = value or account.get("project_id")
        if not project:
            # Without it every send would go to /v1/projects//messages:send.
            raise ValueError("required: the service account file has no project_id")
        if not isinstance(project, str) or not PROJECT_ID.match(project):
            raise ValueError("not a Firebase project id")
        return value

    def project(self) -> str:
        return str(self.project_id or self.service_account["project_id"])


def _config(raw: dict[str, Any]) -> FcmConfig:
    """The stored configuration; one saved before a rule existed fails the send permanently
    (a ConfigurationError) instead of crashing every retry."""
    try:
        return FcmConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("config", *err["loc"]))
        raise ConfigurationError(f"{where}: {err['msg']}") from None


def _tracking_token(payload: dict[str, Any]) -> str | None:
    tracking = payload.get("trackingData")
    token = tracking.get(TRACKING_KEY) if isinstance(tracking, dict) else None
    return token if isinstance(token, str) and token else None


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
    tracking = _tracking_token(payload)
    if tracking is not None:
        # FCM allows only its own message keys, so `trackingData` rides in the string map `data`.
        message["data"] = {**message.get("data", {}), TRACKING_KEY: tracking}
    return message


def payload_problem(message: dict[str, Any]) -> str | None:
    """Why FCM would refuse this message's `data` or size (None: it would not): a reserved data key
    or a notification and data over 4096 bytes. The same every time, so no call is made."""
    for key in message.get("data") or {}:
        if key in RESERVED_DATA_KEYS or key.startswith(RESERVED_DATA_PREFIXES):
            return (
                f"FCM reserves the data key '{key}' (from, message_type, collapse_key and keys starting with"
                " google or gcm): rename it in the payload's data"
            )
    counted = {k: message[k] for k in ("notification", "data") if k in message}
    size = len(json.dumps(counted, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PAYLOAD_BYTES:
        return (
            f"FCM message notification and data are {size} bytes; FCM accepts at most {MAX_PAYLOAD_BYTES}"
            " (shorten the title, body or data)"
        )
    return None


def _error_of(body: str) -> dict[str, Any]:
    """The `error` object of an FCM answer ({} when the body is not FCM's JSON, e.g. a proxy's page)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return {}
    error = answer.get("error") if isinstance(answer, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    # A detail without "@type" counts as the kind asked for: proxies and older answers may omit it.
    details = error.get("details")
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict) and d.get("@type", kind) == kind]


def _unregistered(error: dict[str, Any]) -> bool:
    return any(d.get("errorCode") == "UNREGISTERED" for d in _details(error, FCM_ERROR))


def _token_invalid(error: dict[str, Any]) -> bool:
    """INVALID_ARGUMENT about the registration token itself, not about the message."""
    if error.get("status", "INVALID_ARGUMENT") != "INVALID_ARGUMENT":
        return False
    if "registration token" in str(error.get("message", "")).lower():
        return True
    violations = [v for d in _details(error, BAD_REQUEST) for v in d.get("fieldViolations") or []]
    return any(isinstance(v, dict) and v.get("field") == "message.token" for v in violations)


def said_by_fcm(body: str) -> str | None:
    """FCM's words in an error answer: its FcmError `errorCode` (UNREGISTERED), else the error's
    `status` (NOT_FOUND), and its `message`. Which of the two a 404 is decides an opt-out."""
    error = _error_of(body)
    codes = [d["errorCode"] for d in _details(error, FCM_ERROR) if isinstance(d.get("errorCode"), str)]
    return said(codes[0] if codes else error.get("status"), error.get("message"))


def _token_refused(resp: ProviderResponse) -> bool:
    """A 401 that refuses our access token, so it is worth one refetch and one resend. FCM also
    answers 401 UNAUTHENTICATED with THIRD_PARTY_AUTH_ERROR when the project's APNs key or web
    push credentials are bad: our token is fine, and refetching it per message would fetch a token
    for every send and post each message twice. That one fails the send for good instead."""
    if resp.status != 401:
        return False
    error = _error_of(resp.body)
    return not any(d.get("errorCode") == "THIRD_PARTY_AUTH_ERROR" for d in _details(error, FCM_ERROR))


def recipient_gone(status: int, body: str) -> bool:
    error = _error_of(body)
    return _unregistered(error) or (status == 400 and _token_invalid(error))


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
        cfg = _config(message.config)
        url = join(str(cfg.base_url), f"/v1/projects/{cfg.project()}/messages:send")
        body = {"message": fcm_message(message.recipient, message.payload)}
        problem = payload_problem(body["message"])
        if problem is not None:
            raise ConfigurationError(problem)
        account = cfg.service_account
        key = cache_key(message.integration_id, str(account.get("client_email")), str(account["private_key"]))

        async def post(token: Token) -> ProviderResponse:
            headers = {"Authorization": f"Bearer {token.value}"}
            return await self.ctx.caller.request("POST", url, json=body, headers=headers)

        resp = await with_token(self.ctx.tokens, key, self._fetcher(cfg), post, _token_refused)
        error = classify_http(resp.status, resp.body, resp.headers, said_by_fcm)
        if error is not None:
            # UNREGISTERED: the app instance is gone; 400 about the registration token: it was never
            # valid. Other 400s are about the message, and a bare 404 about the project or URL.
            raise gone_if(error, recipient_gone(resp.status, resp.body))
        answer = json_body(resp)
        name = answer.get("name") if isinstance(answer, dict) else None
        if not name:
            raise not_the_vendors_answer("FCM", resp.status, "message name")
        return accepted(resp, str(name))
