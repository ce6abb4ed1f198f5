"""Message rendering: a step's JSON payload template filled for one recipient.

Variables use the seeds' `${...}` syntax and are substituted inside JSON string values only,
so a value containing quotes or newlines can never break the payload or add keys. A string
that is exactly one variable takes that variable's value as-is (lists stay lists).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

VARIABLE = re.compile(r"\$\{([^{}]+)\}")


class RenderContext(BaseModel):
    """Everything a template may refer to for one send; built by the delivery activity."""

    user_identifier: str
    campaign_name: str
    variation_name: str
    step_name: str
    channel: str
    items: list[dict[str, Any]] = Field(default_factory=list)  # trigger items, newest first
    variables: dict[str, str] = Field(default_factory=dict)  # per-variation text variables
    extra: dict[str, Any] = Field(default_factory=dict)  # filled by later features (tracking, feeds)


def default_payload(ctx: RenderContext) -> dict[str, Any]:
    """The payload sent when a step's message has no template: enough to see what happened."""
    return {
        "to": ctx.user_identifier,
        "channel": ctx.channel,
        "campaign": ctx.campaign_name,
        "variation": ctx.variation_name,
        "step": ctx.step_name,
        "items": ctx.items,
    }


def resolve(name: str, ctx: RenderContext) -> Any:
    """Value of one `${name}`; unknown names render empty (templates tolerate empties)."""
    name = name.strip()
    if name == "User identifier":
        return ctx.user_identifier
    if name == "dyCampaignName":
        return ctx.campaign_name
    if name in {"Variation name", "Step name"}:
        return ctx.variation_name if name == "Variation name" else ctx.step_name
    if name in ctx.extra:
        return ctx.extra[name]
    parts = [p.strip() for p in name.split("|")]
    if len(parts) == 3 and parts[0].lower() == "user data":
        # `${User data|FEED|PROPERTY}`: attributes from user data feeds (merged per user).
        data = ctx.extra.get("user_data")
        return data.get(parts[2], "") if isinstance(data, dict) else ""
    if len(parts) == 3 and parts[0].lower() in {"items in cart", "trigger items", "viewed items"}:
        return _item_field(ctx.items, parts[1], parts[2])
    if len(parts) == 1 and parts[0].lower() in {"items in cart", "trigger items"}:
        return ctx.items
    return ctx.variables.get(name, "")


def _item_field(items: list[dict[str, Any]], field: str, which: str) -> Any:
    m = re.fullmatch(r"item(\d+)", which)
    if not m:
        return ""
    index = int(m.group(1)) - 1
    if index < 0 or index >= len(items):
        return ""
    value = items[index].get(field)
    return "" if value is None else value


def render_value(value: Any, ctx: RenderContext) -> Any:
    if isinstance(value, str):
        whole = VARIABLE.fullmatch(value)
        if whole:
            return resolve(whole.group(1), ctx)
        return VARIABLE.sub(lambda m: _as_text(resolve(m.group(1), ctx)), value)
    if isinstance(value, list):
        return [render_value(v, ctx) for v in value]
    if isinstance(value, Mapping):
        return {k: render_value(v, ctx) for k, v in value.items()}
    return value


def _as_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "" if v is None else str(v)


def render_payload(template: dict[str, Any] | None, ctx: RenderContext) -> dict[str, Any]:
    if template is None:
        return default_payload(ctx)
    rendered = render_value(template, ctx)
    assert isinstance(rendered, dict)
    return rendered
