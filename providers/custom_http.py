"""Custom HTTP integration: POST the rendered JSON payload to the configured URL.

Auth: No Auth, Basic (username, password) or OAuth2 client credentials (token URL, client id and
secret under renameable parameter names, sent as `client_secret_basic` or `client_secret_post`).
OAuth2 tokens come from the shared `TokenCache`: fetched once per integration, refreshed before
`expires_in`, refetched once when the endpoint answers 401. Header values may be marked secret.
Every request carries the send's idempotency key (`Idempotency-Key`) so a provider that honours
it delivers once even when a call whose outcome was unknown is repeated.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, HttpUrl, field_validator

from providers.base import OutboundMessage, ProviderResponse, classify_http
from providers.context import AdapterContext
from providers.http import FORBIDDEN_IN_VALUES, RESERVED_HEADERS
from providers.oauth import Fetcher, Token, cache_key, client_credentials, with_token


class HeaderParam(BaseModel):
    key: str = Field(min_length=1, max_length=200, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    value: str = Field(max_length=4000)
    secret: bool = False


class SaveHeaderParam(HeaderParam):
    """A header as the API accepts it on save: one the HTTP client can send as configured. Stored
    headers saved before this rule are read with `HeaderParam` and refused at send time
    (`providers/http.py::header_problem`), as a configuration error rather than a retried call."""

    @field_validator("key")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v.lower() in RESERVED_HEADERS:
            raise ValueError(f"header '{v}' is set by Rejoin's HTTP client (framing, Host) and cannot be configured")
        return v

    @field_validator("value")
    @classmethod
    def _one_line(cls, v: str) -> str:
        # A line break would start a new header (injection); clients refuse it at send time, which
        # would fail every delivery. The message never quotes the value: it may be a secret.
        if any(c in v for c in FORBIDDEN_IN_VALUES):
            raise ValueError("a header value may not contain a line break (CR or LF) or NUL")
        return v


class NoAuth(BaseModel):
    type: Literal["none"] = "none"


class BasicAuth(BaseModel):
    type: Literal["basic"]
    username: str = Field(min_length=1, max_length=300)
    password: str = Field(min_length=1, max_length=1000)


class OAuth2ClientCredentials(BaseModel):
    type: Literal["oauth2"]
    token_url: HttpUrl
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: str = Field(min_length=1, max_length=2000)
    client_id_name: str = Field("client_id", min_length=1, max_length=100)
    client_secret_name: str = Field("client_secret", min_length=1, max_length=100)
    client_auth: Literal["basic", "post"] = "basic"  # client_secret_basic | client_secret_post
    scope: str | None = Field(None, max_length=1000)


Auth = Annotated[NoAuth | BasicAuth | OAuth2ClientCredentials, Field(discriminator="type")]


class CustomHttpConfig(BaseModel):
    url: HttpUrl
    headers: Sequence[HeaderParam] = Field(default_factory=list, max_length=50)
    auth: Auth = Field(default_factory=NoAuth)

    @field_validator("headers", mode="before")
    @classmethod
    def _headers_map(cls, v: Any) -> Any:
        # `{"X-Key": "v"}` is accepted as shorthand for non-secret headers.
        if isinstance(v, dict):
            return [{"key": k, "value": val} for k, val in v.items()]
        return v


class CustomHttpSaveConfig(CustomHttpConfig):
    """What the API accepts on save (`Config`): each header name once. Sends read stored configs
    with the lenient `CustomHttpConfig`, so one saved before this rule still sends."""

    headers: list[SaveHeaderParam] = Field(default_factory=list, max_length=50)

    @field_validator("headers")
    @classmethod
    def _names_once(cls, v: list[SaveHeaderParam]) -> list[SaveHeaderParam]:
        # Header names are case-insensitive: two `X-Key`s would both be sent, and which secret a
        # masked value keeps on an edit is found by name (providers/secret_fields.py).
        seen: set[str] = set()
        for h in v:
            if h.key.lower() in seen:
                raise ValueError(f"header '{h.key}' is given twice (names are case-insensitive)")
            seen.add(h.key.lower())
        return v


class CustomHttpProvider:
    kind = "custom_http"
    Config = CustomHttpSaveConfig
    honours_idempotency_key = False  # unknown for an arbitrary endpoint: repeats are flagged

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    def _fetcher(self, auth: OAuth2ClientCredentials) -> Fetcher:
        async def fetch() -> Token:
            return await client_credentials(
                self.ctx.caller,
                token_url=str(auth.token_url),
                client_id=auth.client_id,
                client_secret=auth.client_secret,
                client_auth=auth.client_auth,
                id_name=auth.client_id_name,
                secret_name=auth.client_secret_name,
                scope=auth.scope,
            )

        return fetch

    def _key(self, integration_id: str, auth: OAuth2ClientCredentials) -> str:
        return cache_key(integration_id, str(auth.token_url), auth.client_id, auth.client_secret, auth.client_auth)

    async def validate(self, config: dict[str, Any]) -> None:
        """Save-time check: OAuth2 credentials must obtain a token (TokenRejected otherwise)."""
        cfg = CustomHttpConfig.model_validate(config)
        if isinstance(cfg.auth, OAuth2ClientCredentials):
            await self._fetcher(cfg.auth)()

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = CustomHttpConfig.model_validate(message.config)
        headers = {h.key: h.value for h in cfg.headers}
        headers["Idempotency-Key"] = message.idempotency_key
        url = str(cfg.url)

        async def post(token: Token | None = None) -> ProviderResponse:
            if token is not None:
                headers["Authorization"] = f"Bearer {token.value}"
            return await self.ctx.caller.request("POST", url, json=message.payload, headers=headers)

        if isinstance(cfg.auth, BasicAuth):
            raw = f"{cfg.auth.username}:{cfg.auth.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        if isinstance(cfg.auth, OAuth2ClientCredentials):
            key = self._key(message.integration_id, cfg.auth)
            resp = await with_token(self.ctx.tokens, key, self._fetcher(cfg.auth), post)
        else:
            resp = await post()
        error = classify_http(resp.status, resp.body, resp.headers)
        if error is not None:
            raise error
        return ProviderResponse(
            status=resp.status,
            body=resp.body[:2000],
            headers=resp.headers,
            message_id=resp.headers.get("x-message-id") or resp.headers.get("x-request-id"),
        )
