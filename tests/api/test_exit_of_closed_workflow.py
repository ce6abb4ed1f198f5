"""An exit whose journey's workflow was closed outside Rejoin (an operator terminated it in the
Temporal UI; or it failed, timed out) while its store row stayed active. Before, such an exit was
taken for one waiting for its journey's start: the request answered DISPATCH_DEFERRED and the
sweeper replayed it every round for an hour, its events filling the sweeper's window. Now the exit
asks Temporal (only on that path): a closed workflow ends the journey's row with what happened,
and the request is answered as dispatched; a start still on its way is waited for as before."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment

from api import ingestion
from api.deps import AppState
from api.ingestion import accept, redispatch_pending
from api.journeys import dispatch_all
from domain.events import EventRequest, normalize_event
from settings import Settings
from store.engine import Store
from store.event_marks import mark_dispatched
from store.tables import Event
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    eventually,
    journey_handle,
    journey_result,
    outbox,
    purchase,
    reachable_user,
    stored_journeys,
)


def _events(store: Store, event_ids: list[str]) -> list[Event]:
    with store.session() as s:
        return list(s.exec(select(Event).where(col(Event.id).in_(event_ids))).all())


async def _dispatched(store: Store, event_ids: list[str]) -> None:
    async def check() -> None:  # the API marks dispatched events in batches (api/dispatch_marks.py)
        assert all(e.dispatched and not e.deferred for e in _events(store, event_ids))

    await eventually(check)


def _request(dyid: str, event: dict[str, object]) -> EventRequest:
    return EventRequest.model_validate({"user": {"dyid": dyid, "active_consent_accepted": True}, "events": [event]})


async def test_an_exit_for_a_terminated_workflow_ends_the_journey_instead_of_waiting(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await journey_handle(env.client, section, cid, uid).terminate("operator")
    [row] = stored_journeys(store, cid, uid)
    assert row.status == "active"  # what the operator's terminate leaves behind

    ack = await collect(api, section, dyid, purchase([("sku-1", 10.0)]))

    assert ack["warnings"] == [], ack  # answered as dispatched: no wait for a start that never comes
    await _dispatched(store, ack["event_ids"])  # nothing left for the sweeper
    [row] = stored_journeys(store, cid, uid)
    assert (row.status, row.exit_reason) == ("exited", "workflow_terminated"), row
    assert row.ended_at is not None
    assert await outbox(api, section) == []


async def test_an_exit_replayed_by_the_sweeper_for_a_terminated_workflow_is_not_held_back(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """The same on the sweeper's path: a purchase stored while Temporal was unreachable."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await journey_handle(env.client, section, cid, uid).terminate("operator")
    state = AppState(settings=settings, store=store, temporal=env.client)
    body = _request(dyid, purchase([("sku-1", 10.0)]))
    stored = accept(store, state.box, settings, section.id, body, [normalize_event(0, e) for e in body.events])
    assert [c.action for c in stored.commands] == ["exit"]
    mark_dispatched(store, stored.event_ids, dispatched=False)  # the dispatch failed: the sweeper's

    await redispatch_pending(state, older_than=timedelta(0))

    assert all(e.dispatched for e in _events(store, stored.event_ids))  # replayed once, not held back
    [row] = stored_journeys(store, cid, uid)
    assert (row.status, row.exit_reason) == ("exited", "workflow_terminated"), row


async def test_a_new_journeys_start_behind_a_closed_run_of_the_same_workflow_id_is_still_waited_for(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """A person's journeys of a campaign share one workflow id: the closed run Temporal describes may
    be an earlier journey's while the active row is a new one whose start is on its way. That exit
    still waits for the start (the closed run carries another journey id), and the new journey
    then exits without sending."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await journey_handle(env.client, section, cid, uid).terminate("operator")
    await collect(api, section, dyid, purchase([("sku-1", 10.0)]))  # ends the first journey's row
    state = AppState(settings=settings, store=store, temporal=env.client)
    # A new add-to-cart enrolls the person's next journey; its start has not reached Temporal yet.
    body = _request(dyid, add_to_cart("sku-2"))
    second = accept(store, state.box, settings, section.id, body, [normalize_event(0, e) for e in body.events])
    first_row, second_row = stored_journeys(store, cid, uid)
    assert (first_row.status, second_row.status) == ("exited", "active")

    ack = await collect(api, section, dyid, purchase([("sku-2", 10.0)]))

    assert [w["code"] for w in ack["warnings"]] == ["DISPATCH_DEFERRED"], ack
    assert stored_journeys(store, cid, uid)[1].status == "active"  # not taken for the terminated one
    done = await dispatch_all(env.client, settings.task_queue, second.commands)
    assert done.unstarted == [] and done.exits_unmet == []
    mark_dispatched(store, second.event_ids)
    await redispatch_pending(state, older_than=timedelta(0))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason, result.sent) == ("exited", "purchased", 0), result
    assert all(e.dispatched for e in _events(store, ack["event_ids"]))


async def test_an_exit_for_a_journey_whose_workflow_never_starts_is_given_up_in_time(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A journey enrolled whose start never reaches Temporal (no run of its workflow id exists): the
    purchase's exit waits for it, then is given up (EXIT_WAITS_FOR_START), so the sweeper does not
    replay it for ever; the user's later events flow again."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, _ = await reachable_user(api, section)
    state = AppState(settings=settings, store=store, temporal=env.client)
    body = _request(dyid, add_to_cart("sku-1"))
    lost = accept(store, state.box, settings, section.id, body, [normalize_event(0, e) for e in body.events])
    mark_dispatched(store, lost.event_ids)  # its start is never sent
    ack = await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
    assert [w["code"] for w in ack["warnings"]] == ["DISPATCH_DEFERRED"], ack
    await redispatch_pending(state, older_than=timedelta(0))  # within the hour: still waiting
    assert not any(e.dispatched for e in _events(store, ack["event_ids"]))
    monkeypatch.setattr(ingestion, "EXIT_WAITS_FOR_START", timedelta(0))
    await redispatch_pending(state, older_than=timedelta(0))
    assert all(e.dispatched for e in _events(store, ack["event_ids"]))
