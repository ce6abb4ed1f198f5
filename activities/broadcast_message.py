"""A batched recipient's message: composed once by its first attempt, its send row, and its call.

Shared by the one-recipient path (activities/broadcast.py `_prepare`) and the chunked one
(activities/broadcast_plain.py), which must compose, record and call exactly alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from activities.broadcast_batch import Batch, Ready
from activities.delivery import compose_payload, make_linker, unsubscribe_url
from activities.frozen_message import FrozenMessage
from domain.campaign import Variation
from domain.tracking import Signer
from providers import secret_fields
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from store.tables import Integration, Send, User, now_utc


class BatchMessages:
    def __init__(self, providers: ProviderRegistry, box: SecretBox, signer: Signer | None, public_url: str) -> None:
        self.providers = providers
        self.box = box
        self.signer = signer
        self.public_url = public_url

    def compose(
        self, s: Session, batch: Batch, *, as_of: datetime, key: str, user: User, variation: Variation, channel: str,
        recipient: str, items: list[dict[str, Any]], integration: Integration,
    ) -> FrozenMessage:  # fmt: skip
        """The first attempt's message (the same rendering as journeys: templates, tracking links,
        feeds, localization), kept for the retries. Raises MissingRequired."""
        linker = make_linker(self.signer, self.public_url, s, batch.section_id, key, user.id, channel, as_of)
        payload = compose_payload(
            s, section_id=batch.section_id, spec=batch.spec, variation=variation, step_index=0, channel=channel,
            user=user, identifier=recipient, items=items, linker=linker, as_of=as_of,
            native_email=integration.kind == "smtp",
        )  # fmt: skip
        return FrozenMessage(
            recipient=recipient, payload=payload, campaign_name=batch.spec.name, step_name=variation.steps[0].name,
            unsubscribe_url=unsubscribe_url(channel, linker),
        )  # fmt: skip

    def new_send(
        self, batch: Batch, frozen: FrozenMessage, *, key: str, journey_id: str, variation_id: str, channel: str,
        integration_id: str, user_id: str, as_of: datetime,
    ) -> Send:  # fmt: skip
        """A new send row, in flight, with its message kept (encrypted) for its retries."""
        return Send(
            key=key, journey_id=journey_id, section_id=batch.section_id, campaign_id=batch.campaign_id,
            variation_id=variation_id, step_index=0, channel=channel, integration_id=integration_id, user_id=user_id,
            status="in_flight", attempts=1, created_at=as_of, updated_at=now_utc(), message_enc=frozen.seal(self.box),
        )  # fmt: skip

    def ready(
        self, batch: Batch, frozen: FrozenMessage, integration: Integration, *, channel: str, key: str,
        journey_id: str, opt_in_id: int | None, fell_back: str | None = None, attempt: int = 1,
        before: tuple[str, bool, str | None] | None = None,
    ) -> Ready:  # fmt: skip
        """What the call needs: the kept message with the integration's config and secrets as they are
        now (not content: credentials may rotate between attempts), and when the batch read them."""
        config_secrets = batch.secrets_of(self.box, integration)
        message = frozen.outbound(
            section_id=batch.section_id, integration_id=integration.id, channel=channel, idempotency_key=key,
            config=secret_fields.merge(dict(integration.config), config_secrets), secrets=config_secrets,
        )  # fmt: skip
        return Ready(
            message=message, provider=self.providers.for_kind(integration.kind), kind=integration.kind, send_key=key,
            journey_id=journey_id, opt_in_id=opt_in_id, fell_back=fell_back, attempt=attempt, before=before,
            config_as_of=integration.updated_at,
        )  # fmt: skip
