"""Rejoin's tables (SQLModel). One place to see everything the store keeps.

PII rule: raw emails and phone numbers are stored only encrypted (`*_enc`), looked up by their
SHA-256 hash; users are referred to everywhere else by opaque ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, Index, Text, TypeDecorator, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# A journey's exit reason and a decision's reason (writers clip to it: `domain.text.clipped`).
REASON_LENGTH = 200


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, always returns timezone-aware UTC datetimes (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now_utc() -> datetime:
    return datetime.now(UTC)


class Section(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    global_cap_messages: int | None = None  # None: the deployment default
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class ApiKey(SQLModel, table=True):
    """An API key: `rjk_<id>_<secret>`; only the SHA-256 of the secret is stored."""

    id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(index=True, foreign_key="section.id", max_length=40)
    kind: str = Field(max_length=16)  # ingestion | management
    secret_hash: str = Field(max_length=64)
    label: str = Field(default="", max_length=200)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class Campaign(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(index=True, foreign_key="section.id", max_length=40)
    name: str = Field(max_length=200)
    type: str = Field(max_length=40)
    status: str = Field(default="draft", max_length=16, index=True)
    priority: int = 50
    version: int = 1
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class CampaignVersion(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("campaign_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(foreign_key="campaign.id", max_length=40)
    version: int
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class Integration(SQLModel, table=True):
    """A channel's messaging provider for a section (one per channel)."""

    __table_args__ = (UniqueConstraint("section_id", "channel"),)

    id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(foreign_key="section.id", max_length=40)
    channel: str = Field(max_length=16)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=40)  # outbox | custom_http | vendor presets
    identifier_type: str = Field(max_length=16)  # email | phone | custom
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    secrets_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class User(SQLModel, table=True):
    """A person as Rejoin knows them: opaque id, CUID once identified, cart and attributes."""

    __table_args__ = (Index("ix_user_section_cuid", "section_id", "cuid"),)

    id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(foreign_key="section.id", max_length=40)
    cuid: str | None = Field(default=None, max_length=256)
    cuid_type: str | None = Field(default=None, max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    cart: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    locale: str | None = Field(default=None, max_length=32)
    is_test: bool = False
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # Set by an erasure (store/erasure.py): the row is a tombstone, kept for in-flight steps only. No
    # batched run lists it (store/broadcasts.py `all_users`), and one listed before skips it.
    erased_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class Device(SQLModel, table=True):
    """An anonymous device id (`dyid`) and the user it belongs to."""

    section_id: str = Field(primary_key=True, max_length=40)
    device_key: str = Field(primary_key=True, max_length=256)
    user_id: str = Field(index=True, foreign_key="user.id", max_length=40)


class UserIdentifier(SQLModel, table=True):
    """A hashed identifier of a user (email hash, phone hash, custom id hash, push token hash)."""

    section_id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(primary_key=True, max_length=16)  # email | phone | custom | app_push | web_push
    value_hash: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(index=True, foreign_key="user.id", max_length=40)


class OptIn(SQLModel, table=True):
    """Channel consent for one identifier value; the value itself only encrypted."""

    __table_args__ = (UniqueConstraint("section_id", "channel", "value_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    section_id: str = Field(foreign_key="section.id", max_length=40)
    channel: str = Field(max_length=16)
    identifier_type: str = Field(max_length=16)
    value_hash: str = Field(max_length=64)
    value_enc: str = Field(sa_column=Column(Text, nullable=False))
    opted_in: bool
    source: str = Field(default="api", max_length=16)
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class Product(SQLModel, table=True):
    section_id: str = Field(primary_key=True, max_length=40)
    sku: str = Field(primary_key=True, max_length=256)
    name: str | None = None
    url: str | None = None
    image_url: str | None = None
    price: float | None = None
    in_stock: bool | None = None
    categories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class Event(SQLModel, table=True):
    """Every accepted event, as normalised; the durable record ingestion answers 202 for."""

    __table_args__ = (
        Index("ix_event_user_time", "section_id", "user_id", "received_at"),
        Index("ix_event_pending", "dispatched", "received_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(foreign_key="section.id", max_length=40)
    user_id: str = Field(max_length=40)
    kind: str = Field(max_length=32)
    name: str = Field(max_length=200)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    consented: bool = True
    received_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    dispatched: bool = False
    deferred: bool = False  # inline dispatch failed or waited: the sweeper owns it now
    transaction_id: str | None = Field(default=None, max_length=64)
    value: float | None = None
    # Whether the user had a CUID when the event was accepted: attribution asks that of a buyer,
    # and a later login must not change the answer. NULL: stored before this column existed.
    identified: bool | None = None
    # Journey commands computed when the event was accepted, replayed verbatim if dispatch to
    # Temporal failed (signals carry the event id, so a replay is harmless).
    commands: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Journey(SQLModel, table=True):
    """One journey (campaign x user x trigger); `id` is the journey's stable business key."""

    __table_args__ = (
        Index("ix_journey_user", "section_id", "user_id", "status"),
        Index("ix_journey_campaign", "campaign_id", "triggered_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    workflow_id: str = Field(max_length=300, index=True)
    section_id: str = Field(max_length=40)
    campaign_id: str = Field(max_length=40)
    campaign_version: int
    priority: int = 50
    user_id: str = Field(max_length=40)
    variation_id: str = Field(max_length=64)
    is_control: bool = False
    is_test: bool = False
    # Started by a preview (a test user's, api/routes/journeys.py::preview): its steps send while the
    # campaign is a draft or paused (activities/journey.py::_decide). A server default: rows stored
    # before it, and rows inserted without it, are no preview.
    is_preview: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false")))
    status: str = Field(default="active", max_length=16)  # active | completed | exited | holdout | merged
    exit_reason: str | None = Field(default=None, max_length=REASON_LENGTH)
    triggered_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    last_sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    ended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class Decision(SQLModel, table=True):
    """One entry of a journey's decision trace: what was decided for a step, and why."""

    __table_args__ = (Index("ix_decision_journey", "journey_id", "step_index"),)

    key: str = Field(primary_key=True, max_length=300)  # idempotent: a retried activity rewrites it
    journey_id: str = Field(max_length=64)
    section_id: str = Field(max_length=40)
    user_id: str = Field(max_length=40, index=True)
    step_index: int
    step_name: str = Field(max_length=100)
    outcome: str = Field(max_length=16)  # sent | skipped | failed | exited
    reason: str | None = Field(default=None, max_length=REASON_LENGTH)
    channel: str | None = Field(default=None, max_length=16)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class CapReservation(SQLModel, table=True):
    """A counted message slot for (user, channel); the send key makes reserving idempotent."""

    __table_args__ = (Index("ix_cap_user_channel", "section_id", "user_id", "channel", "reserved_at"),)

    key: str = Field(primary_key=True, max_length=300)
    section_id: str = Field(max_length=40)
    user_id: str = Field(max_length=40)
    channel: str = Field(max_length=16)
    campaign_id: str = Field(max_length=40)
    reserved_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    released: bool = False


class Send(SQLModel, table=True):
    """One provider call for a step on a channel, keyed by the idempotency key."""

    __table_args__ = (Index("ix_send_campaign", "campaign_id", "created_at"),)

    key: str = Field(primary_key=True, max_length=300)
    journey_id: str = Field(max_length=64, index=True)
    section_id: str = Field(max_length=40)
    campaign_id: str = Field(max_length=40)
    variation_id: str = Field(max_length=64)
    step_index: int
    channel: str = Field(max_length=16)
    integration_id: str = Field(max_length=40)
    user_id: str = Field(max_length=40)
    status: str = Field(max_length=16)  # in_flight | retrying | accepted | failed
    attempts: int = 0
    possible_duplicate: bool = False
    provider_status: int | None = None
    provider_message_id: str | None = Field(default=None, max_length=300)
    provider_response: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # The message as its first attempt composed it (recipient, payload...), encrypted: every retry
    # sends it again under the same key. NULL once the send is final (activities/frozen_message.py).
    message_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class OutboxMessage(SQLModel, table=True):
    """A message "delivered" by the built-in outbox provider, kept for people to look at."""

    id: int | None = Field(default=None, primary_key=True)
    section_id: str = Field(max_length=40, index=True)
    send_key: str = Field(max_length=300, unique=True)
    channel: str = Field(max_length=16)
    integration_id: str = Field(max_length=40)
    recipient: str = Field(max_length=512)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
