"""The campaign spec: what a marketer configures, validated once when it is saved.

A spec is stored as JSON per campaign version; journeys keep the version they started with.
Validation errors name the offending field (pydantic locations), so the API's 422 points at
`variations.0.steps.2.wait` rather than at "the campaign".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from domain.conditions import Condition, Operator
from domain.durations import Duration
from domain.field_error import FieldError

# Validation context of a spec read back from the store: checks added after it was saved do not
# refuse it (a journey in flight must still load its campaign).
STORED = "stored"


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    APP_PUSH = "app_push"
    WEB_PUSH = "web_push"


class CampaignType(StrEnum):
    CART_ABANDONMENT = "cart_abandonment"
    PRODUCT_VIEW = "product_view"
    CUSTOM_TRIGGER = "custom_trigger"
    # Driven by feeds and schedules; specified here so specs can name them, run by later work.
    PRICE_DROP = "price_drop"
    PRODUCT_ATTRIBUTE_CHANGE = "product_attribute_change"
    USER_ATTRIBUTE_CHANGE = "user_attribute_change"
    SCHEDULED = "scheduled"


# Campaign types whose journeys are started by ingested events (this engine runs these).
EVENT_TRIGGERED_TYPES = frozenset(
    {CampaignType.CART_ABANDONMENT, CampaignType.PRODUCT_VIEW, CampaignType.CUSTOM_TRIGGER}
)
# Types sent as batched runs (feed changes, schedules): one message per recipient, no journey.
BATCH_TYPES = frozenset(
    {
        CampaignType.PRICE_DROP,
        CampaignType.PRODUCT_ATTRIBUTE_CHANGE,
        CampaignType.USER_ATTRIBUTE_CHANGE,
        CampaignType.SCHEDULED,
    }
)
PUSH_CHANNELS = frozenset({"app_push", "web_push"})

MIN_WAIT = timedelta(minutes=5)
MAX_WAIT = timedelta(days=90)
MAX_STEPS = 10


def _check_wait(value: timedelta) -> timedelta:
    if not MIN_WAIT <= value <= MAX_WAIT:
        raise ValueError("wait must be between 5 minutes and 90 days")
    return value


WaitTime = Annotated[Duration, Field(description="ISO 8601 duration (PT4H) or seconds; 5 minutes to 90 days")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrequencyCap(_Strict):
    """At most `max_messages` from this campaign per user on one channel per rolling `period`."""

    max_messages: int = Field(ge=1, le=1000)
    period: Duration = timedelta(days=1)

    @field_validator("period")
    @classmethod
    def _period_positive(cls, v: timedelta) -> timedelta:
        if v < timedelta(minutes=1) or v > timedelta(days=365):
            raise ValueError("period must be between 1 minute and 365 days")
        return v


class CampaignSettings(_Strict):
    primary_metric: Literal["revenue", "purchases", "clicks", "ctr", "add_to_carts"] = "revenue"
    attribution_window: Duration = timedelta(days=7)
    frequency_caps: dict[Channel, FrequencyCap] = Field(default_factory=dict)
    # Native email tracking: wrap every http(s) href of email HTML and add the open pixel.
    auto_tracking: bool = False

    @field_validator("attribution_window")
    @classmethod
    def _window_range(cls, v: timedelta) -> timedelta:
        if v < timedelta(hours=1) or v > timedelta(days=90):
            raise ValueError("attribution window must be between 1 hour and 90 days")
        return v


class Trigger(_Strict):
    """When a journey starts: conditions on the triggering event's products or properties."""

    event_name: str | None = Field(
        None, min_length=1, max_length=200, description="Custom Trigger: the event name to react to"
    )
    conditions: list[Condition] = Field(default_factory=list, max_length=50)
    match: Literal["all", "any"] = "all"
    wait: WaitTime = timedelta(hours=1)

    _wait_range = field_validator("wait")(_check_wait)


class ExitRule(_Strict):
    """"Don't send if": an event that cancels the remaining steps of the journey."""

    event: Literal["purchase", "purchase_of_trigger_item", "add_to_cart", "product_view", "custom"]
    event_name: str | None = Field(None, min_length=1, max_length=200)
    conditions: list[Condition] = Field(default_factory=list, max_length=50)
    match: Literal["all", "any"] = "all"

    @model_validator(mode="after")
    def _custom_needs_name(self) -> ExitRule:
        if self.event == "custom" and not self.event_name:
            raise FieldError("event_name", "required when event is 'custom'")
        return self


class Audience(_Strict):
    """"Send to": all users (no conditions) or conditions on user attributes."""

    conditions: list[Condition] = Field(default_factory=list, max_length=50)
    match: Literal["all", "any"] = "all"


HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _check_zone(v: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone '{v}' (use an IANA name such as Europe/Paris)") from None
    return v


class SendSchedule(_Strict):
    """When a batched campaign sends: the next `time_of_day` on one of `days`, in `timezone`.

    `send_at` (scheduled campaigns) sends once at that instant instead. `recurring` (scheduled
    campaigns) sends at every `time_of_day` on `days` until `until` (a Temporal Schedule per
    campaign starts the runs; no `POST .../runs` needed).
    """

    time_of_day: str = Field("10:00", pattern=HHMM)
    days: list[Weekday] = Field(default_factory=lambda: list(ALL_DAYS), min_length=1)
    timezone: str = "UTC"
    send_at: datetime | None = None
    recurring: bool = False
    until: datetime | None = Field(None, description="Recurring schedules: no run after this instant")

    _zone = field_validator("timezone")(_check_zone)

    @field_validator("send_at", "until")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("needs a timezone offset (e.g. 2026-05-01T09:00:00+02:00)")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> SendSchedule:
        if self.recurring and self.send_at is not None:
            raise ValueError("send_at (once) and recurring exclude each other")
        if self.until is not None and not self.recurring:
            raise ValueError("until applies to recurring schedules only")
        return self


class SendWindow(_Strict):
    """Quiet hours: send only between `start` and `end` in the recipient's timezone.

    The recipient's timezone is their `timezone` attribute; `timezone` here is the default.
    Outside the window a message `wait`s for it to open or is `drop`ped.
    """

    start: str = Field("09:00", pattern=HHMM)
    end: str = Field("21:00", pattern=HHMM)
    timezone: str = "UTC"
    outside: Literal["wait", "drop"] = "wait"

    _zone = field_validator("timezone")(_check_zone)

    @model_validator(mode="after")
    def _opens(self, info: ValidationInfo) -> SendWindow:
        # A window of no time never opens: its journeys would defer for ever. Specs stored before
        # this check (`STORED`) still load; domain.schedule.in_window reads theirs as all day.
        if self.start == self.end and not (info.context or {}).get(STORED):
            raise ValueError("start and end must differ (a window from 10:00 to 10:00 never opens)")
        return self


class ValueCondition(_Strict):
    """A condition on one value (an attribute's old or new value)."""

    op: Operator = "eq"
    value: Any = None

    def as_condition(self) -> Condition:
        return Condition(field="value", op=self.op, value=self.value)


class PriceDropRule(_Strict):
    """Only drops of at least this much trigger (both may be set; both must hold)."""

    min_amount: float | None = Field(None, gt=0)
    min_percent: float | None = Field(None, gt=0, le=100)


class AttributeChangeRule(_Strict):
    """Which attribute's change triggers, with conditions on its old and new values."""

    attribute: str = Field(min_length=1, max_length=200)
    old: list[ValueCondition] = Field(default_factory=list, max_length=10)
    new: list[ValueCondition] = Field(default_factory=list, max_length=10)


class Message(_Strict):
    """One channel's message in a step: a JSON payload template (None = the default payload).

    `payload` may be given as JSON text (it is parsed and stored as an object) or as an object;
    `template_id` refers to a saved template instead (docs/messages.md).
    """

    payload: dict[str, Any] | None = None
    template_id: str | None = Field(None, min_length=1, max_length=40)

    @field_validator("payload", mode="before")
    @classmethod
    def _parse_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            from domain.render import parse_json_template

            return parse_json_template(v, "")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Message:
        if self.payload is not None and self.template_id is not None:
            raise ValueError("give either payload or template_id, not both")
        return self


class Step(_Strict):
    name: str = Field(min_length=1, max_length=100)
    wait: WaitTime | None = Field(
        None, description="Wait after the previous step; the first step waits the trigger's wait instead"
    )
    messages: dict[Channel, Message] = Field(min_length=1)

    @field_validator("wait")
    @classmethod
    def _wait_range(cls, v: timedelta | None) -> timedelta | None:
        return None if v is None else _check_wait(v)


class Variation(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = Field(min_length=1, max_length=100)
    share: float = Field(ge=0, le=100, description="Percent of triggered users allocated here")
    control: bool = Field(False, description="Holdout: allocated and reported, receives nothing")
    steps: list[Step] = Field(default_factory=list, max_length=MAX_STEPS)
    # Free-text variables: a text, or localized texts {"default": ..., "fr_FR": ...}.
    variables: dict[str, str | dict[str, str]] = Field(default_factory=dict, max_length=200)

    @field_validator("variables")
    @classmethod
    def _localized_have_default(cls, v: dict[str, str | dict[str, str]]) -> dict[str, str | dict[str, str]]:
        for name, value in v.items():
            if not name.strip() or "|" in name or "{" in name or "}" in name:
                raise FieldError(name, "a variable name needs text and no | { }")  # loc: variables.<name>
            if isinstance(value, dict) and "default" not in value:
                raise FieldError(name, "localized values need a 'default' entry")
        return v

    @model_validator(mode="after")
    def _steps_fit_role(self) -> Variation:
        if self.control and self.steps:
            raise FieldError("steps", "a control (holdout) variation has no steps")
        if not self.control and not self.steps:
            raise FieldError("steps", "a variation needs at least one step")
        for i, step in enumerate(self.steps):
            if i == 0 and step.wait is not None:
                raise FieldError("steps.0.wait", "the first step waits the trigger's wait; leave it empty")
            if i > 0 and step.wait is None:
                raise FieldError(f"steps.{i}.wait", "required (the wait after the previous step)")
        return self


def _check_template(payload: dict[str, Any], variation: Variation, place: str) -> None:
    from domain.render import TemplateError, validate_template

    try:
        validate_template(payload, set(variation.variables), place)
    except TemplateError as err:
        raise FieldError(err.place, err.message) from None


class CampaignSpec(_Strict):
    """A campaign as configured; stored per version."""

    name: str = Field(min_length=1, max_length=200)
    type: CampaignType
    priority: int = Field(50, ge=0, le=1000, description="Higher wins when campaigns compete for a user")
    settings: CampaignSettings = Field(default_factory=CampaignSettings)
    trigger: Trigger = Field(default_factory=Trigger)
    audience: Audience = Field(default_factory=Audience)
    exits: list[ExitRule] = Field(default_factory=list, max_length=20)
    channel_priority: list[Channel] = Field(min_length=1)
    variations: list[Variation] = Field(min_length=1, max_length=20)
    # Feed- and schedule-driven campaigns (BATCH_TYPES).
    schedule: SendSchedule | None = None
    send_window: SendWindow | None = None
    price_drop: PriceDropRule | None = None
    attribute_change: AttributeChangeRule | None = None
    throttle_per_second: float | None = Field(None, gt=0, le=10_000, description="Sends per second, at most")

    @model_validator(mode="after")
    def _batch_rules(self, info: ValidationInfo) -> CampaignSpec:
        if self.type not in BATCH_TYPES:
            if not (info.context or {}).get(STORED):  # specs saved before this check still load
                self._no_batch_fields()
            return self
        if any(len(v.steps) > 1 for v in self.variations):
            raise FieldError("variations", "feed- and schedule-driven campaigns send one message (one step)")
        if self.type in (CampaignType.PRODUCT_ATTRIBUTE_CHANGE, CampaignType.USER_ATTRIBUTE_CHANGE):
            if self.attribute_change is None:
                raise FieldError("attribute_change", f"required for a {self.type.value} campaign")
        if self.type == CampaignType.SCHEDULED:
            if self.schedule is None:
                raise FieldError("schedule", "required for a scheduled campaign")
            not_push = [c.value for c in self.channel_priority if c.value not in PUSH_CHANNELS]
            if not_push:
                raise FieldError("channel_priority", f"scheduled campaigns use push channels only (got {not_push})")
        elif self.schedule is not None and self.schedule.recurring:
            raise FieldError("schedule.recurring", "only scheduled campaigns recur (feed-driven ones follow their feed)")
        return self

    def _no_batch_fields(self) -> None:
        """A triggered campaign refuses what only batched runs read: accepted, it would do nothing
        (a custom-trigger campaign with a recurring schedule never recurred)."""
        for name in ("schedule", "price_drop", "attribute_change", "throttle_per_second"):
            if getattr(self, name) is not None:
                raise FieldError(name, f"only feed- and schedule-driven campaigns take {name}, not {self.type.value}")
        if self.type != CampaignType.CUSTOM_TRIGGER and self.trigger.event_name is not None:
            raise FieldError(
                "trigger.event_name", f"only custom_trigger campaigns are named by an event, not {self.type.value}"
            )

    @field_validator("channel_priority")
    @classmethod
    def _unique_channels(cls, v: list[Channel]) -> list[Channel]:
        if len(set(v)) != len(v):
            raise ValueError("each channel may appear once")
        return v

    @model_validator(mode="after")
    def _sends_something(self, info: ValidationInfo) -> CampaignSpec:
        # A campaign of a holdout alone allocates everyone to it and never sends: surely a mistake.
        if all(v.control for v in self.variations) and not (info.context or {}).get(STORED):
            raise FieldError("variations", "a campaign needs a variation that is not the control (holdout)")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> CampaignSpec:
        if self.type == CampaignType.CUSTOM_TRIGGER and not self.trigger.event_name:
            raise FieldError("trigger.event_name", "required for a custom_trigger campaign")
        total = sum(v.share for v in self.variations)
        if abs(total - 100.0) > 1e-6:
            raise FieldError("variations", f"shares must sum to 100 (got {total:g})")
        ids = [v.id for v in self.variations]
        if len(set(ids)) != len(ids):
            raise FieldError("variations", "ids must be unique")
        if sum(1 for v in self.variations if v.control) > 1:
            raise FieldError("variations", "at most one control (holdout) variation")
        for vi, var in enumerate(self.variations):
            for si, step in enumerate(var.steps):
                missing = [c.value for c in step.messages if c not in self.channel_priority]
                if missing:
                    raise FieldError(
                        f"variations.{vi}.steps.{si}.messages", f"uses {missing}, not listed in channel_priority"
                    )
                for channel, message in step.messages.items():
                    if message.payload is not None:
                        _check_template(message.payload, var, f"variations.{vi}.steps.{si}.messages.{channel.value}.payload")
        return self

    def variation(self, variation_id: str) -> Variation | None:
        return next((v for v in self.variations if v.id == variation_id), None)
