"""Small helpers shared by the vendor presets."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from providers.base import ProviderResponse


class PresetConfig(BaseModel):
    """Base for preset configurations: `base_url` overrides the vendor host (EU regions, tests)."""

    model_config = ConfigDict(extra="ignore")


def join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def json_body(resp: ProviderResponse) -> Any:
    try:
        return json.loads(resp.body) if resp.body else None
    except ValueError:
        return None


def accepted(resp: ProviderResponse, message_id: str | None) -> ProviderResponse:
    return ProviderResponse(status=resp.status, body=resp.body[:2000], headers=resp.headers, message_id=message_id)


def text_of(payload: dict[str, Any], *keys: str) -> str:
    """The first non-empty string among `keys`, else the payload as JSON (never silently empty)."""
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return json.dumps(payload, separators=(",", ":"))
