"""A batch of events (`POST /v2/collect/user/event`) checked whole: every fault of every event at once.

FastAPI validates a body against its model before the route runs and stops there: an event without
a `name` (or whose `properties` is no object) hid every other event's faults, which only the
route's own check of each event's standard schema (`domain.events.normalize_event`) finds. So the
route takes the body as a plain JSON object (`EventBatchBody`, documented as `EventRequest`) and
`check_event_batch` runs both checks over every event, merging their faults in one list: the
envelope's first, then each event's, in the order of the events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from domain.events import EventIn, EventRequest, EventValidationError, NormalizedEvent, normalize_event

MAX_EVENTS = 100  # as EventRequest.events' max_length: no more events are checked one by one


def _json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        # pydantic's own type and message for a model given no object (api/errors.py reads the type)
        raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
    return value


# The body as sent, any JSON object; the OpenAPI schema still describes it as an EventRequest.
EventBatchBody = Annotated[dict[str, Any], PlainValidator(_json_object, json_schema_input_type=EventRequest)]


class BatchInvalid(ValueError):
    """Every fault of a batch, each as pydantic reports one (`type`, `loc` from the body's root, `msg`,
    and `ctx` when pydantic gives one)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} faults in the batch")
        self.errors = errors


def check_event_batch(
    raw: dict[str, Any], *, allow_http_push: bool, found: Sequence[dict[str, Any]] = ()
) -> tuple[EventRequest, list[NormalizedEvent]]:
    """The batch validated and each event normalised, or BatchInvalid listing every fault.

    `found`: faults seen before the body was parsed (the request limits' non-finite numbers), given
    in the same shape; each is listed in its event's place, and any other fault at the same field
    is dropped (`1e400` is also over an amount's bound: one fault, said the clearer way)."""
    request: EventRequest | None = None
    structural: list[dict[str, Any]] = []
    try:
        request = EventRequest.model_validate(raw)
    except ValidationError as exc:
        structural = [dict(e) for e in exc.errors(include_url=False)]
    events = raw.get("events")
    normalized: list[NormalizedEvent] = []
    schema_faults: list[dict[str, Any]] = []
    for index, sent in enumerate(events[:MAX_EVENTS] if isinstance(events, list) else []):
        event = request.events[index] if request is not None else _readable(sent)
        if event is None:
            continue  # not an object, or properties not one: its structural fault says so
        try:
            normalized.append(normalize_event(index, event, allow_http_push=allow_http_push))
        except EventValidationError as exc:
            schema_faults += [{"type": "rejoin_error", "loc": e.loc(), "msg": e.message} for e in exc.errors()]
    taken = {tuple(f["loc"]) for f in found}
    faults = [*_except_at(structural, taken), *found, *_except_at(schema_faults, taken)]
    if faults:
        raise BatchInvalid(sorted(faults, key=_event_index))
    assert request is not None  # it failed, or there are faults
    return request, normalized


def _except_at(faults: list[dict[str, Any]], taken: set[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [f for f in faults if tuple(f["loc"]) not in taken]


def _readable(sent: Any) -> EventIn | None:
    """An event whose envelope is faulty (no `name`, a name too long) but whose properties can still
    be checked against their schema; None when they cannot (no object)."""
    if not isinstance(sent, dict):
        return None
    properties = sent.get("properties", {})
    if not isinstance(properties, dict):
        return None
    name = sent.get("name")
    return EventIn.model_construct(name=name if isinstance(name, str) else "", properties=properties)


def _event_index(fault: dict[str, Any]) -> int:
    """-1 for the envelope's faults, else the index of the event the fault is in (a stable sort keeps
    each event's faults in the order they were found: its envelope's, the numbers', its schema's)."""
    loc = fault["loc"]
    if len(loc) >= 2 and loc[0] == "events" and isinstance(loc[1], int):
        return int(loc[1])
    return -1
