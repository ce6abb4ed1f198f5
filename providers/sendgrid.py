"""SendGrid v3 Mail Send: a dynamic template filled with the step's payload, or the email itself.

POST {base}/v3/mail/send, `Authorization: Bearer <api key>`. With a template (the integration's
`template_id`, or the payload's own `template_id` key) the payload becomes
`dynamic_template_data` (or the payload's own `dynamic_template_data` key). Without one SendGrid
needs the email itself: `subject` and `content` come from the payload's `subject` and its
`text` (or `body`) and `html` (or a SendGrid-shaped `content` list); a message with neither a
template nor a subject and a body is refused before the call, as a permanent failure naming
what is missing (SendGrid would answer 400 to every send of it). SendGrid has no idempotency
key: the send key travels in `custom_args` so a possible duplicate can be traced in SendGrid's
activity feed. A journey or broadcast email carries its one-click unsubscribe link in `headers`
(`List-Unsubscribe`, `List-Unsubscribe-Post`, RFC 8058), with or without a template.

SendGrid's 429 carries no Retry-After, only `X-RateLimit-Reset` (unix epoch seconds when the
limit resets): read here as the Retry-After, so the retry waits for the reset rather than a blind
back-off. Only here: other vendors send the same header name meaning seconds from now.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, HttpUrl

from providers.base import OutboundMessage, ProviderError, ProviderResponse, classify_http, parse_rate_limit_reset
from providers.context import AdapterContext
from providers.preset import PresetConfig, accepted, answer_object, join, said_in_list


def with_reset_wait(error: ProviderError) -> ProviderError:
    """A 429 without Retry-After waits until SendGrid's `X-RateLimit-Reset` (when it has one)."""
    if error.status == 429 and error.retry_after is None:
        error.retry_after = parse_rate_limit_reset(error.headers.get("x-ratelimit-reset"))
    return error


def said_by_sendgrid(body: str) -> str | None:
    """SendGrid's words in an error answer: `errors[].message`, after the field it names."""
    return said_in_list(answer_object(body).get("errors"), "field", "message")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def mail_content(payload: dict[str, Any]) -> list[dict[str, str]]:
    """The email's parts as SendGrid's `content`: text/plain first, as SendGrid requires.
    A payload's own `content` list ([{"type", "value"}]) is taken as it is written."""
    given = payload.get("content")
    if isinstance(given, list) and given:
        typed = [{"type": str(p["type"]), "value": p["value"]} for p in given
                 if isinstance(p, dict) and _text(p.get("type")) and _text(p.get("value"))]  # fmt: skip
        return sorted(typed, key=lambda p: p["type"].strip().lower() != "text/plain")
    parts: list[dict[str, str]] = []
    text = _text(payload.get("text")) or _text(payload.get("body"))
    if text:
        parts.append({"type": "text/plain", "value": text})
    html = _text(payload.get("html"))
    if html:
        parts.append({"type": "text/html", "value": html})
    return parts


def unsubscribe_headers(url: str | None) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe headers for the send's unsubscribe URL (none without one)."""
    if not url:
        return {}
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


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
        body = mail_body(cfg, message)
        resp = await self.ctx.caller.request(
            "POST",
            join(str(cfg.base_url), "/v3/mail/send"),
            json=body,
            headers={"Authorization": f"Bearer {cfg.api_key}"},
        )
        error = classify_http(resp.status, resp.body, resp.headers, said_by_sendgrid)
        if error is not None:
            raise with_reset_wait(error)
        return accepted(resp, resp.headers.get("x-message-id"))


def mail_body(cfg: SendGridConfig, message: OutboundMessage) -> dict[str, object]:
    """The Mail Send request: the template's shape, or subject and content without a template."""
    headers = unsubscribe_headers(message.unsubscribe_url)
    payload = dict(message.payload)
    template_id = payload.pop("template_id", None) or cfg.template_id
    personalization: dict[str, object] = {"to": [{"email": message.recipient}]}
    body: dict[str, object] = {"personalizations": [personalization], "from": sender(cfg)}
    if template_id:
        personalization["dynamic_template_data"] = payload.pop("dynamic_template_data", None) or payload
    else:
        subject, content = _text(payload.get("subject")), mail_content(payload)
        if subject is None or not content:
            missing = " and ".join(w for w, gone in (("subject", subject is None), ("body", not content)) if gone)
            raise ProviderError(
                f"the message has no SendGrid template and no {missing}: give the integration (or the payload) a "
                "template_id, or the payload a subject and a text or html body",
                retryable=False,
            )
        body["subject"], body["content"] = " ".join(subject.splitlines()), content  # a subject is one line
    personalization["custom_args"] = {"rejoin_send_key": message.idempotency_key}
    if template_id:
        body["template_id"] = template_id
    if headers:
        body["headers"] = headers
    return body


def sender(cfg: SendGridConfig) -> dict[str, str]:
    out = {"email": cfg.from_email}
    if cfg.from_name:
        out["name"] = cfg.from_name
    return out
