"""Experience API ingestion: `/v2/collect/user/event` and `/v2/collect/user/pageview`."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from api.deps import Ingestion, StateDep
from api.ingestion import accept, exits_awaiting_start, withdraw_enrollments
from api.journeys import dispatch_all
from api.limits import deferred_non_finite
from domain.event_batch import BatchInvalid, EventBatchBody, check_event_batch
from domain.events import EventRequest, PageviewRequest, odd_currency, pageview_event, unknown_dy_type
from store.event_marks import mark_dispatched

router = APIRouter(prefix="/v2/collect/user", tags=["ingestion"])
log = logging.getLogger(__name__)


class Acknowledged(BaseModel):
    """202: the events are durably stored; journeys are started or signalled from them."""

    accepted: int
    event_ids: list[str]
    warnings: list[dict[str, str]] = []


async def _ingest(
    state: StateDep, section_id: str, body: EventRequest | PageviewRequest, events: list,  # type: ignore[type-arg]
    warnings: list[dict[str, str]] | None = None,
) -> Acknowledged:  # fmt: skip
    result = await asyncio.to_thread(accept, state.store, state.box, state.settings, section_id, body, events)
    warnings = list(warnings or [])
    if result.commands and result.queued_behind_pending:
        await asyncio.to_thread(mark_dispatched, state.store, result.event_ids, dispatched=False)
        warnings.append({"code": "DISPATCH_DEFERRED", "message": "queued behind this user's earlier events"})
    elif result.commands:
        try:
            done = await dispatch_all(await state.client(), state.settings.task_queue, result.commands)
            if done.unstarted:  # rare: a concurrent request's trigger started the person's journey first
                await asyncio.to_thread(withdraw_enrollments, state.store, done.unstarted)
            if bool(done.exits_unmet) and await asyncio.to_thread(exits_awaiting_start, state.store, done.exits_unmet):
                # A concurrent request's trigger has not started the journey yet: the sweeper
                # replays this exit after it (a dropped exit sent the reminders after the purchase).
                await asyncio.to_thread(mark_dispatched, state.store, result.event_ids, dispatched=False)
                warnings.append({"code": "DISPATCH_DEFERRED", "message": "waits for the journey's start"})
            else:
                state.dispatch_marks.add(result.event_ids)
        except Exception as exc:  # stored: the sweeper replays it; the caller must not resend
            log.warning("dispatch deferred for %s: %s", result.event_ids, exc)
            await asyncio.to_thread(mark_dispatched, state.store, result.event_ids, dispatched=False)
            warnings.append({"code": "DISPATCH_DEFERRED", "message": "stored; journeys will be updated shortly"})
    if not body.user.consented:
        warnings.append({"code": "NO_CONSENT", "message": "active_consent_accepted is not true: no journey starts"})
    return Acknowledged(accepted=len(result.event_ids), event_ids=result.event_ids, warnings=warnings)


@router.post("/event", status_code=202)
async def collect_event(body: EventBatchBody, principal: Ingestion, state: StateDep, request: Request) -> Acknowledged:
    """The body is checked here, whole, not by FastAPI (which stops at the events' structural faults):
    one 422 lists every fault of every event (`domain/event_batch.py`)."""
    allow_http = state.settings.allow_private_urls  # local push-service stand-ins are plain http
    try:
        batch, events = check_event_batch(body, allow_http_push=allow_http, found=deferred_non_finite(request.scope))
    except BatchInvalid as exc:
        # FastAPI's own error, so the answer is rendered as every other validation error is.
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors], body=body) from None
    return await _ingest(state, principal.section_id, batch, events, _event_warnings(batch))


def _event_warnings(body: EventRequest) -> list[dict[str, str]]:
    """Warnings about events stored as sent but probably not meant so (docs/api.md): a `dyType`
    naming no standard schema (`UNKNOWN_DYTYPE`: stored as a custom event, so a typo would lose
    its cart or purchase) and a `currency` that is no three-letter code (`CURRENCY_NOT_ISO_4217`:
    its revenue is reported apart from the shop's currency). Every type warning comes first."""
    types: list[dict[str, str]] = []
    currencies: list[dict[str, str]] = []
    for index, event in enumerate(body.events):
        found = unknown_dy_type(event)
        if found is not None:
            given, meant = found
            hint = f" (did you mean {meant!r}?)" if meant else ""
            message = f"dyType {given[:80]!r} is not a standard schema; stored as a custom event{hint}"
            types.append(_warning("UNKNOWN_DYTYPE", index, "dyType", message))
        currency = odd_currency(event)
        if currency is not None:
            message = f"currency {currency[:16]!r} is not an ISO 4217 code (e.g. 'EUR'); its revenue is reported apart"
            currencies.append(_warning("CURRENCY_NOT_ISO_4217", index, "currency", message))
    return types + currencies


def _warning(code: str, index: int, prop: str, message: str) -> dict[str, str]:
    """A 202 warning about `events[index].properties[prop]`."""
    return {"code": code, "field": f"events.{index}.properties.{prop}", "message": f"events.{index}: {message}"}


@router.post("/pageview", status_code=202)
async def collect_pageview(body: PageviewRequest, principal: Ingestion, state: StateDep) -> Acknowledged:
    return await _ingest(state, principal.section_id, body, [pageview_event(body)])
