"""The content of one send, fixed at its first attempt and reused by every retry of its key.

Every attempt of a send carries the same idempotency key (the send key). Composing the message
again for a retry could change it (the user's cart now, catalog prices and feeds, the opt-in's
address): vendors that check the body against the key (Stripe-style) refuse the retry as a
conflict, and vendors that de-duplicate deliver the first content while Rejoin's records
describe the second. So the first attempt keeps what the provider call carries as content (the
recipient, the rendered payload, the campaign and step names, the unsubscribe URL) on the send
row, `Send.message_enc`, sealed with the secret box (it holds the address and personal data),
written by the same INSERT/UPDATE that marks the send in flight. The integration's config and
secrets are not content: they are read at every attempt (credentials may rotate meanwhile).
The column is cleared once the send has a final status (accepted, failed, skipped) or its
person is erased: no personal data is kept longer than a retry may need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from providers.base import OutboundMessage
from security.crypto import SecretBox

_VERSION = 1


@dataclass(frozen=True)
class FrozenMessage:
    recipient: str
    payload: dict[str, Any]
    campaign_name: str
    step_name: str
    unsubscribe_url: str | None

    def seal(self, box: SecretBox) -> str:
        """The encrypted form stored in `Send.message_enc`."""
        # Plain JSON (ASCII-escaped: a lone surrogate in user data still encodes): a rendered
        # payload is JSON already (the outbox stores it in a JSON column, HTTP vendors get it as
        # JSON), and a JSON round trip gives the vendor the very same bytes.
        fields = {
            "v": _VERSION,
            "recipient": self.recipient,
            "payload": self.payload,
            "campaign_name": self.campaign_name,
            "step_name": self.step_name,
            "unsubscribe_url": self.unsubscribe_url,
        }
        return box.encrypt(json.dumps(fields, separators=(",", ":")))

    @classmethod
    def open(cls, box: SecretBox, sealed: str) -> FrozenMessage:
        fields = json.loads(box.decrypt(sealed))
        if fields.get("v") != _VERSION:
            raise ValueError(f"unknown frozen message version {fields.get('v')!r}")
        return cls(
            recipient=fields["recipient"],
            payload=fields["payload"],
            campaign_name=fields["campaign_name"],
            step_name=fields["step_name"],
            unsubscribe_url=fields["unsubscribe_url"],
        )

    def outbound(
        self,
        *,
        section_id: str,
        integration_id: str,
        channel: str,
        idempotency_key: str,
        config: dict[str, Any],
        secrets: dict[str, Any],
    ) -> OutboundMessage:
        """The provider call of this content, with the integration's settings as they are now."""
        return OutboundMessage(
            section_id=section_id,
            integration_id=integration_id,
            channel=channel,
            recipient=self.recipient,
            payload=self.payload,
            idempotency_key=idempotency_key,
            config=config,
            secrets=secrets,
            campaign_name=self.campaign_name,
            step_name=self.step_name,
            unsubscribe_url=self.unsubscribe_url,
        )
