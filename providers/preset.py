"""Small helpers shared by the vendor presets."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from providers.base import ProviderError, ProviderResponse, said


class PresetConfig(BaseModel):
    """Base for preset configurations: `base_url` overrides the vendor host (EU regions, tests)."""

    model_config = ConfigDict(extra="ignore")


def _parse_file(value: Any) -> Any:
    """An uploaded JSON file may arrive as its text or already parsed."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError("service account file is not JSON") from None
    return value


def _complete(value: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("client_email", "private_key", "token_uri") if not value.get(k)]
    if missing:
        raise ValueError(f"service account file lacks {', '.join(missing)}")
    return value


# A Google-style service-account file (`client_email`, `private_key`, `token_uri`, ...).
ServiceAccount = Annotated[dict[str, Any], BeforeValidator(_parse_file), AfterValidator(_complete)]


def join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def json_body(resp: ProviderResponse) -> Any:
    try:
        return json.loads(resp.body) if resp.body else None
    except ValueError:
        return None


def answer_object(body: str) -> dict[str, Any]:
    """A JSON object answer ({} when the body is not one: a proxy's HTML page, a list, text)."""
    try:
        answer = json.loads(body) if body else None
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def said_in_list(errors: Any, code: str, *messages: str) -> str | None:
    """The vendor's words of the first errors of a JSON list (SendGrid's and Klaviyo's `errors`):
    each error's `code` and first of `messages` (`said`), joined by "; "."""
    if not isinstance(errors, list):
        return None
    words = []
    for error in errors[:3]:
        if isinstance(error, dict):
            text = next((error[m] for m in messages if isinstance(error.get(m), str) and error[m].strip()), None)
            words.append(said(error.get(code), text))
    return "; ".join(w for w in words if w) or None


def accepted(resp: ProviderResponse, message_id: str | None) -> ProviderResponse:
    return ProviderResponse(status=resp.status, body=resp.body[:2000], headers=resp.headers, message_id=message_id)


def not_the_vendors_answer(vendor: str, status: int, id_name: str) -> ProviderError:
    """A 2xx without the id the vendor always returns: not the vendor's own answer (a proxy's or a
    wrong base_url's HTML page, an empty 202). Counting it accepted hid messages that never left;
    it fails for good instead (no retry: a repeat would reach the same wrong place)."""
    return ProviderError(
        f"{vendor} answered {status} without a {id_name}: not {vendor}'s answer (check base_url or a proxy "
        "in between); the message was probably not sent",
        retryable=False,
        status=status,
    )


def text_of(payload: dict[str, Any], *keys: str) -> str:
    """The first non-empty string among `keys`, else the payload as JSON (never silently empty)."""
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return json.dumps(payload, separators=(",", ":"))
