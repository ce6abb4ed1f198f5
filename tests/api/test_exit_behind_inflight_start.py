"""A purchase that arrives while another request's add-to-cart is still starting the journey (its
signal-with-start not yet at Temporal) must not be dropped: its exit waits for that start, and the
journey ends without sending. Before, the exit found no workflow, was taken for "journey already
ended", and every reminder went out after the purchase."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

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
    journey_result,
    outbox,
    purchase,
    reachable_user,
)


async def test_a_purchase_overtaking_the_starting_add_to_cart_still_exits_the_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    state = AppState(settings=settings, store=store, temporal=env.client)
    # Request 1 is stored (journey enrolled) and its dispatch is still on its way to Temporal.
    body = EventRequest.model_validate(
        {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": [add_to_cart("sku-1")]}
    )
    first = accept(store, state.box, settings, section.id, body, [normalize_event(0, e) for e in body.events])
    assert [c.action for c in first.commands] == ["trigger"]

    # Request 2, the purchase, is answered meanwhile: its exit has no workflow to reach yet.
    ack = await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
    assert [w["code"] for w in ack["warnings"]] == ["DISPATCH_DEFERRED"], ack
    with store.session() as s:
        (purchase_event,) = s.exec(select(Event).where(Event.id.in_(ack["event_ids"]))).all()  # type: ignore[attr-defined]
        assert not purchase_event.dispatched

    # Request 1's start lands; the sweeper then replays the purchase behind it.
    done = await dispatch_all(env.client, settings.task_queue, first.commands)
    assert done.unstarted == [] and done.exits_unmet == []
    mark_dispatched(store, first.event_ids)
    await redispatch_pending(state, older_than=timedelta(0))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason, result.sent) == ("exited", "purchased", 0), result
    assert await outbox(api, section) == []
    with store.session() as s:
        replayed = s.get(Event, purchase_event.id)
        assert replayed is not None and replayed.dispatched
