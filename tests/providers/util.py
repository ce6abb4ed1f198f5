"""Builders for adapter tests."""

from __future__ import annotations

import secrets
from typing import Any

from providers.base import OutboundMessage


def message(config: dict[str, Any], payload: dict[str, Any] | None = None, *, channel: str = "email",
            recipient: str = "jane@example.com", key: str | None = None, integration_id: str | None = None,
            campaign_name: str = "Cart Reminder") -> OutboundMessage:  # fmt: skip
    return OutboundMessage(
        section_id="sec_test",
        integration_id=integration_id or "int_" + secrets.token_hex(4),
        channel=channel,
        recipient=recipient,
        payload=payload if payload is not None else {"subject": "Hi"},
        idempotency_key=key or "snd_" + secrets.token_hex(6),
        config=config,
        campaign_name=campaign_name,
        step_name="Reminder",
    )
