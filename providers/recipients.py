"""Which identifier type a preset's recipient is, checked when an integration is saved.

The identifier type is what opt-ins must use and what each send hands the adapter as its
recipient. A preset given another type (a Twilio integration of emails, a Web Push one of
phone numbers) would accept every opt-in and then fail every send, so it is refused up front.
Kinds not listed here (outbox, custom HTTP, and presets whose recipient field is configurable
beyond Klaviyo's) take any type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.klaviyo import IDENTIFIER_TYPE_BY_PROFILE_FIELD

# Presets whose recipient is always the same kind of value (docs/channels.md, "Kinds"):
# kind -> (identifier type, what the recipient is).
FIXED_IDENTIFIER_TYPE: dict[str, tuple[str, str]] = {
    "sendgrid": ("email", "an email address"),
    "smtp": ("email", "an email address"),
    "twilio": ("phone", "a phone number (E.164)"),
    "fcm": ("custom", "an FCM registration token"),
    "apns": ("custom", "an APNs device token"),
    "webpush": ("custom", "a browser's push subscription JSON"),
}


def required_identifier_type(kind: str, config: Mapping[str, Any]) -> str | None:
    """The identifier type `kind` needs with this (validated) config, or None when any will do."""
    if kind == "klaviyo":
        field = config.get("profile_field")
        return IDENTIFIER_TYPE_BY_PROFILE_FIELD.get(field) if isinstance(field, str) else None
    fixed = FIXED_IDENTIFIER_TYPE.get(kind)
    return fixed[0] if fixed is not None else None


def identifier_type_error(kind: str, identifier_type: str, config: Mapping[str, Any]) -> str | None:
    """Why `identifier_type` cannot be used with this preset, or None."""
    required = required_identifier_type(kind, config)
    if required is None or required == identifier_type:
        return None
    if kind == "klaviyo":
        field = config.get("profile_field")
        return f"a klaviyo integration with profile_field {field} needs identifier_type {required}"
    return f"a {kind} recipient is {FIXED_IDENTIFIER_TYPE[kind][1]}: identifier_type must be {required}"
