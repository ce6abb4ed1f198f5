"""The built-in outbox: "delivers" by storing the message locally, listed at /api/v1/outbox.

It lets a newcomer see messages without any vendor account. Storing is keyed by the send's
idempotency key, so a retried delivery can never store a message twice.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from providers.base import OutboundMessage, ProviderResponse
from store.engine import Store
from store.tables import OutboxMessage, now_utc


class OutboxProvider:
    honours_idempotency_key = True

    def __init__(self, store: Store) -> None:
        self.store = store

    def store_message(self, message: OutboundMessage) -> ProviderResponse:
        try:
            with self.store.session() as s:
                existing = s.exec(select(OutboxMessage).where(OutboxMessage.send_key == message.idempotency_key)).first()
                if existing is None:
                    row = OutboxMessage(
                        section_id=message.section_id,
                        send_key=message.idempotency_key,
                        channel=message.channel,
                        integration_id=message.integration_id,
                        recipient=message.recipient,
                        payload=message.payload,
                        created_at=now_utc(),
                    )
                    s.add(row)
                    s.flush()
                    existing = row
                message_id = f"outbox-{existing.id}"
        except IntegrityError:  # a concurrent attempt stored it first: same outcome
            message_id = "outbox-duplicate-suppressed"
        return ProviderResponse(status=202, body='{"stored": true}', message_id=message_id)

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        import asyncio

        return await asyncio.to_thread(self.store_message, message)
