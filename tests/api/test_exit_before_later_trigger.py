"""A person's events held by the sweeper must not freeze behind an exit of their own: an exit waits
only for a journey enrolled at or before its event, never for one a LATER event of the person
enrolled (that event's start is held behind the exit's: neither moved until the exit was given up an
hour later, and a purchase meanwhile was queued behind them while the cart reminder went out).

The trial's repro, through the real API and sweeper: with Temporal unreachable, an add-to-cart (it
triggers a cart journey and carries an exit of the browse campaign) is stored for the sweeper; a
product view of the same person is queued behind it and enrolls a browse journey. Once Temporal is
back, one sweep sends both; a purchase then exits the cart journey at once."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlmodel import col, select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from api.deps import AppState
from api.ingestion import redispatch_pending
from settings import Settings
from store.engine import Store
from store.tables import Event
from tests.api.temporal_outage import api_connecting_to
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    outbox,
    purchase,
    reachable_user,
    step,
    stored_journeys,
)

BROWSE = {
    "name": "Browse", "type": "product_view", "trigger": {"wait": "PT1H"},
    "exits": [{"event": "add_to_cart"}, {"event": "purchase"}], "channel_priority": ["email"],
    "variations": [{"id": "a", "name": "A", "share": 100, "steps": [step("Browse reminder")]}],
}  # fmt: skip


def _warnings(ack: dict) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(w["code"], w["message"]) for w in ack["warnings"]]


async def test_an_exit_does_not_wait_for_a_journey_its_persons_later_event_enrolled(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    await add_integration(api, section)
    cart = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    browse = await create_campaign(api, section, BROWSE)
    dyid, uid = await reachable_user(api, section)
    user = {"dyid": dyid, "active_consent_accepted": True}
    async with api_connecting_to(settings, store, "127.0.0.1:1") as offline:
        first = await collect(offline, section, dyid, add_to_cart("sku-1"))
        assert [c for c, _ in _warnings(first)] == ["DISPATCH_DEFERRED"], first
        page = {"type": "PRODUCT", "data": ["sku-2"], "location": "https://shop.example/p/2"}
        r = await offline.post("/v2/collect/user/pageview", json={"user": user, "context": {"page": page}},
                               headers=section.ing)  # fmt: skip
        assert r.status_code == 202, r.text
        second = r.json()
    assert _warnings(second) == [("DISPATCH_DEFERRED", "queued behind this user's earlier events")], second
    (enrolled,) = stored_journeys(store, browse, uid)
    assert enrolled.status == "active"

    # Temporal is back: one round of the sweeper sends both events, in order.
    state = AppState(settings=settings, store=store, temporal=env.client)
    await redispatch_pending(state, older_than=timedelta(0))
    ids = first["event_ids"] + second["event_ids"]
    with store.session() as s:
        pending = s.exec(select(Event.id).where(col(Event.id).in_(ids), Event.dispatched == False)).all()  # noqa: E712
    assert pending == [], "the person's events froze behind the add-to-cart's exit"
    # The product view came after the add-to-cart: its browse journey runs (the exit preceded it).
    desc = await journey_handle(env.client, section, browse, uid).describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING

    # The purchase is not queued behind anything: it ends the cart journey before its reminder.
    bought = await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
    assert bought["warnings"] == [], bought
    result = await journey_result(env.client, section, cart, uid)
    assert (result.status, result.exit_reason, result.sent) == ("exited", "purchased", 0), result
    assert await outbox(api, section) == []
