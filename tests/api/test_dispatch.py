"""Accepted events are never lost, and concurrent triggers make one journey."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.deps import AppState
from api.ingestion import redispatch_pending
from api.main import create_app
from settings import Settings
from store.engine import Store
from store.tables import Event, Journey
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
    purchase,
    reachable_user,
)
from workflows.journey import JourneyWorkflow


async def test_events_accepted_while_temporal_is_down_are_dispatched_later(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """With Temporal unreachable ingestion still answers 202; the sweeper starts the journey later."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    down = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
    app = create_app(down, store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://down.test") as offline:
        r = await offline.post("/v2/collect/user/event", headers=section.ing, json={
            "user": {"dyid": dyid, "active_consent_accepted": True}, "events": [add_to_cart("sku-1")]})  # fmt: skip
    assert r.status_code == 202 and r.json()["warnings"][0]["code"] == "DISPATCH_DEFERRED"
    event_id = r.json()["event_ids"][0]
    with store.session() as s:
        ev = s.get(Event, event_id)
        assert ev is not None and not ev.dispatched
    state = AppState(settings=settings, store=store, temporal=env.client)
    assert await redispatch_pending(state, older_than=timedelta(0)) >= 1
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 1
    with store.session() as s:
        ev = s.get(Event, event_id)
        assert ev is not None and ev.dispatched
        # The journey was enrolled when the event was accepted; the replay ran that enrollment.
        rows = s.exec(select(Journey).where(Journey.campaign_id == cid)).all()
        assert [(j.id, j.triggered_at) for j in rows] == [(result.journey_id, ev.received_at)], rows


async def test_concurrent_triggers_make_one_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """Ten simultaneous cart events for one user start exactly one journey that sends once."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await asyncio.gather(*(collect(api, section, dyid, add_to_cart(f"sku-{i}")) for i in range(10)))
        handle = journey_handle(env.client, section, cid, uid)
        view = await handle.query(JourneyWorkflow.current_state)
        assert view.trigger_count == 10, view
        await env.fast_forward(handle)
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 1 and result.runs == 1
    client: Client = env.client

    async def one_run() -> None:
        runs = [w async for w in client.list_workflows(f'WorkflowId = "{handle.id}"')]
        assert len(runs) == 1, runs

    await eventually(one_run)


async def test_exit_in_the_same_batch_as_its_trigger_is_not_lost(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """[add-to-cart, purchase] in one request: the journey starts and exits; nothing is sent."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"), purchase([("sku-1", 10.0)]))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.sent) == ("exited", 0), result


async def test_events_queue_behind_a_users_undispatched_events(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """A purchase arriving while the user's cart event still waits for dispatch is replayed after it."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    down = create_app(settings.model_copy(update={"temporal_address": "127.0.0.1:1"}), store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=down), base_url="http://down.test") as offline:
        r = await offline.post("/v2/collect/user/event", headers=section.ing, json={
            "user": {"dyid": dyid, "active_consent_accepted": True}, "events": [add_to_cart("sku-1")]})  # fmt: skip
        assert r.json()["warnings"][0]["code"] == "DISPATCH_DEFERRED"
    ack = await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
    assert ack["warnings"][0]["code"] == "DISPATCH_DEFERRED", "must not overtake the pending trigger"
    state = AppState(settings=settings, store=store, temporal=env.client)
    await redispatch_pending(state, older_than=timedelta(0))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.sent) == ("exited", 0), result


async def test_dispatched_events_are_marked_in_batches_without_anyone_flushing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """The marks of inline dispatches land by themselves shortly after (so the sweeper leaves them
    alone), without a second transaction per request."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="P1D"))
    dyid, _ = await reachable_user(api, section)
    acks = [await collect(api, section, dyid, add_to_cart(f"sku-{i}")) for i in range(3)]
    ids = [i for ack in acks for i in ack["event_ids"]]

    async def all_marked() -> None:
        with store.session() as s:
            rows = [s.get(Event, i) for i in ids]
        assert all(r is not None and r.dispatched and not r.deferred for r in rows), rows

    await eventually(all_marked, timeout=5)


async def test_a_replayed_trigger_does_not_restart_a_journey_that_has_ended(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """The dispatch went through but its "dispatched" mark was lost (a crash in between): the sweeper
    replays the event later. The journey it started has ended meanwhile; the replay must not start
    a second journey (a second send), and the event ends up marked."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    ack = await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 1
    handle = journey_handle(env.client, section, cid, uid)
    first_run = (await handle.describe()).run_id
    with store.session() as s:  # the mark is lost
        ev = s.get(Event, ack["event_ids"][0])
        assert ev is not None
        ev.dispatched, ev.deferred = False, True
        s.add(ev)
    state = AppState(settings=settings, store=store, temporal=env.client)
    await redispatch_pending(state, older_than=timedelta(0))
    assert (await handle.describe()).run_id == first_run  # no second journey
    with store.session() as s:
        ev = s.get(Event, ack["event_ids"][0])
        assert ev is not None and ev.dispatched


async def test_an_event_that_cannot_be_replayed_does_not_hold_up_other_users(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """The sweeper replays oldest first; an event whose replay fails (a command this version cannot
    read) stays undispatched for the next round, and other users' events behind it still go."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    bad_dyid, _ = await reachable_user(api, section)
    down = create_app(settings.model_copy(update={"temporal_address": "127.0.0.1:1"}), store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=down), base_url="http://down.test") as offline:
        acks = []
        for who in (bad_dyid, dyid):  # the unreadable one first: the oldest
            r = await offline.post("/v2/collect/user/event", headers=section.ing, json={
                "user": {"dyid": who, "active_consent_accepted": True}, "events": [add_to_cart("sku-1")]})  # fmt: skip
            acks.append(r.json()["event_ids"][0])
    with store.session() as s:
        bad = s.get(Event, acks[0])
        assert bad is not None
        bad.commands = [{"action": "teleport", "workflow_id": "w", "event_id": bad.id, "campaign_id": cid}]
        s.add(bad)
    state = AppState(settings=settings, store=store, temporal=env.client)
    await redispatch_pending(state, older_than=timedelta(0))
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 1
    with store.session() as s:
        left, went = s.get(Event, acks[0]), s.get(Event, acks[1])
        assert left is not None and not left.dispatched
        assert went is not None and went.dispatched
