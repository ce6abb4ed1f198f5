"""A step due while a merge's exit is on its way must not send. The person bought on their own
device; an anonymous device of theirs had a cart journey whose step was due; the device logged in.
The merge owed that journey an exit (`purchased`), but the exit travelled only as a signal, sent
after the merge committed: the step's decision, made meanwhile, found the merged person (their
email) and sent the cart reminder after the purchase. The merge now records the exit on the journey
row in its own transaction, and a step deciding before the signal arrives skips with its reason.

Here the merge's request is accepted (committed) and its commands held back while the device's
journey's step comes due; they are sent afterwards, as a dispatch late by a moment would be."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from api.deps import AppState
from api.ingestion import accept
from api.journeys import dispatch_all
from domain.events import EventRequest, normalize_event
from settings import Settings
from store.engine import Store
from store.event_marks import mark_dispatched
from store.tables import Decision
from tests.api.test_merge_exits_moved_journey import EMAIL, _campaign, _ended, _user_id
from tests.helpers import (
    SectionKeys,
    add_to_cart,
    collect,
    eventually,
    journey_handle,
    journey_result,
    login,
    new_dyid,
    outbox,
    purchase,
    stored_journeys,
)


async def test_a_step_due_before_the_merges_exit_signal_does_not_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    cid = await _campaign(api, section)
    device, person_device = new_dyid(), new_dyid()
    with env.with_time_skipping_disabled():  # the device's journey waits until the merge
        await collect(api, section, device, add_to_cart("sku-1"))  # J_A, anonymous
        anonymous = await _user_id(api, section, device)
        await collect(api, section, person_device, login(EMAIL), add_to_cart("sku-1"))
        person = await _user_id(api, section, person_device)
        await collect(api, section, person_device, purchase([("sku-1", 10.0)]))
        await _ended(store, cid, person)

    # The device logs in: the merge commits, its exit of J_A not yet sent.
    state = AppState(settings=settings, store=store, temporal=env.client)
    body = EventRequest.model_validate({"user": {"dyid": device, "active_consent_accepted": True},
                                        "events": [login(EMAIL)]})  # fmt: skip
    merged = accept(store, state.box, settings, section.id, body, [normalize_event(0, e) for e in body.events])
    assert [(c.action, c.reason) for c in merged.commands] == [("exit", "purchased")], merged.commands

    # J_A's first step comes due meanwhile (the trigger's hour passes) and is decided.
    handle = journey_handle(env.client, section, cid, anonymous)
    await env.fast_forward(handle, timedelta(hours=1, minutes=1))

    async def decided() -> list[tuple[str, str | None]]:
        with store.session() as s:
            rows = s.exec(select(Decision).where(Decision.user_id == anonymous, Decision.step_index == 0)).all()
            found = [(d.outcome, d.reason) for d in rows]
        assert found, "J_A's first step is not decided yet"
        return found

    assert await eventually(decided) == [("skipped", "purchased")]
    assert await outbox(api, section) == [], "the cart reminder was sent after the purchase"

    # The exit's signal arrives: the journey ends as the merge recorded it.
    await dispatch_all(env.client, settings.task_queue, merged.commands)
    mark_dispatched(store, merged.event_ids)
    moved = await journey_result(env.client, section, cid, anonymous)
    assert (moved.status, moved.exit_reason, moved.sent) == ("exited", "purchased", 0), moved
    assert [(j.status, j.exit_reason) for j in stored_journeys(store, cid, person)] == [("exited", "purchased")] * 2
