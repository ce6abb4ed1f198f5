"""Journey semantics found by new-user trials: a consent withdrawal ends running journeys, a custom
trigger's products are its trigger items, a send-window deferral sleeps at least a floor, and an
exit in the same request as a test user's trigger ends the journey before step 0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

import activities.journey as journey_activities
from api.journeys import JourneyCommand, trigger_input, with_exits_at_start
from domain.campaign import CampaignSpec
from store.engine import Store
from store.tables import Event, User
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
    step,
)
from workflows.journey import DEFER_FLOOR, DEFER_FLOOR_PATCH, START_EXITS_PATCH, JourneyWorkflow, window_wait
from workflows.models import Enrollment, JourneyInput, JourneyPlan


async def _post(
    api: httpx.AsyncClient, sec: SectionKeys, user: dict[str, Any], *events: dict[str, Any]
) -> dict[str, Any]:
    r = await api.post("/v2/collect/user/event", json={"user": user, "events": list(events)}, headers=sec.ing)
    assert r.status_code == 202, r.text
    return dict(r.json())


PING = {"name": "Page ping", "properties": {"where": "home"}}


async def _replays(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    """The journey's history, after checking it replays on the current workflow code (sandboxed)."""
    history = await handle.fetch_history()
    await Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter).replay_workflow(history)
    return list(history.events)


def _patches(events: list[HistoryEvent]) -> bytes:
    return b" ".join(p.data for e in events for d in e.marker_recorded_event_attributes.details.values()
                     for p in d.payloads)  # fmt: skip


# ---------------------------------------------------------------- 1. consent withdrawn


async def test_consent_withdrawn_mid_journey_ends_it_before_the_next_step(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A real user who consented, got step 1, then sends `active_consent_accepted: false` gets no
    step 2: the journey ends `exited` with reason `consent_withdrawn` (journeys API, Temporal).
    A request merely missing the flag withdraws nothing."""
    await add_integration(api, section)
    steps = [step("One"), step("Two", "P1D"), step("Three", "P2D")]
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=steps))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        handle = journey_handle(env.client, section, cid, uid)
        assert await env.fast_forward(handle, timedelta(hours=2))
        await _post(api, section, {"dyid": dyid}, PING)  # consent missing: not a withdrawal
        view = await handle.query(JourneyWorkflow.current_state)
        assert view.exit_reason is None and view.step_index == 1, view
        ack = await _post(api, section, {"dyid": dyid, "active_consent_accepted": False}, PING, PING)
        await env.fast_forward(handle)  # through the later waits, if the journey still had them
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason) == ("exited", "consent_withdrawn"), result
    assert [m["payload"]["step"] for m in await outbox(api, section)] == ["One"]
    r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
    assert r.status_code == 200, r.text
    [journey] = [j for j in r.json() if j["campaign_id"] == cid]
    assert (journey["status"], journey["exit_reason"]) == ("exited", "consent_withdrawn"), journey
    with store.session() as s:  # one exit per journey for the request, not one per event
        rows = [s.get(Event, eid) for eid in ack["event_ids"]]
        commands = [c for row in rows if row is not None for c in row.commands]
    assert [(c["action"], c["reason"]) for c in commands] == [("exit", "consent_withdrawn")], commands


async def test_consent_withdrawal_with_a_trigger_starts_nothing_and_needs_no_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """`false` on a user without journeys costs nothing (no command) and, as before, starts none."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, _ = await reachable_user(api, section)
    ack = await collect(api, section, dyid, add_to_cart("sku-1"), consent=False)
    assert ack.get("warnings"), ack
    r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
    assert r.status_code == 200 and r.json() == [], r.text


# ---------------------------------------------------------------- 2. custom trigger items


def _wishlist_campaign() -> dict[str, Any]:
    shoes = [{"field": "category", "op": "eq", "value": "Shoes"}]
    return {
        "name": "Wishlist", "type": "custom_trigger", "channel_priority": ["email"],
        "trigger": {"wait": "PT1H", "event_name": "Added to wishlist", "conditions": shoes},
        "exits": [{"event": "purchase_of_trigger_item"}],
        "variations": [{"id": "a", "name": "A", "share": 100, "steps": [
            step("Still want it?", payload={"to": "${User identifier}", "items": "${Trigger items}",
                                            "first": "${Trigger items|name|item1}"})]}],
    }  # fmt: skip


async def test_custom_trigger_products_are_the_trigger_items(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A custom event naming products (`productId`, or a `cart` list as standard events carry them):
    trigger conditions hold on those products, and they are the journey's trigger items."""
    await add_integration(api, section)
    r = await api.put("/api/v1/products", headers=section.mgmt, json=[
        {"sku": "shoe", "name": "Red Shoe", "categories": ["Shoes"]},
        {"sku": "sock", "name": "Sock", "categories": ["Socks"]}])  # fmt: skip
    assert r.status_code < 300, r.text
    cid = await create_campaign(api, section, _wishlist_campaign())
    single, single_id = await reachable_user(api, section)
    listed, listed_id = await reachable_user(api, section)
    socks, _ = await reachable_user(api, section)
    await collect(api, section, single, {"name": "Added to wishlist", "properties": {"productId": "shoe"}})
    await collect(api, section, listed, {"name": "Added to wishlist", "properties": {
        "cart": [{"productId": "sock"}, {"productId": "shoe", "itemPrice": 80}]}})  # fmt: skip
    await collect(api, section, socks, {"name": "Added to wishlist", "properties": {"productId": "sock"}})
    for uid, skus in ((single_id, ["shoe"]), (listed_id, ["sock", "shoe"])):
        result = await journey_result(env.client, section, cid, uid)
        assert result.status == "completed" and result.sent == 1, result
    messages = await outbox(api, section)
    assert sorted([i["sku"] for i in m["payload"]["items"]] for m in messages) == [["shoe"], ["sock", "shoe"]]
    assert {m["payload"]["first"] for m in messages} == {"Red Shoe", "Sock"}
    r = await api.get(f"/api/v1/users/{socks}/journeys", headers=section.mgmt)
    assert r.json() == [], r.text  # no shoe among its products: no trigger


async def test_purchase_of_a_custom_triggers_item_exits(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """`purchase_of_trigger_item` ends a custom trigger's journey when a product it named is bought."""
    await add_integration(api, section)
    r = await api.put("/api/v1/products", headers=section.mgmt, json=[
        {"sku": "shoe", "name": "Red Shoe", "categories": ["Shoes"]}])  # fmt: skip
    assert r.status_code < 300, r.text
    cid = await create_campaign(api, section, _wishlist_campaign())
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, {"name": "Added to wishlist", "properties": {"productId": "shoe"}})
        await collect(api, section, dyid, purchase([("shoe", 80.0)]))
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason) == ("exited", "purchase_of_trigger_item"), result
    assert await outbox(api, section) == []


# ---------------------------------------------------------------- 3. deferral floor


@pytest.mark.parametrize(
    ("opens_in", "slept"),
    [(timedelta(hours=7), timedelta(hours=7)), (timedelta(minutes=2), timedelta(minutes=2)),
     (timedelta(seconds=30), DEFER_FLOOR), (timedelta(), DEFER_FLOOR), (-timedelta(hours=1), DEFER_FLOOR)],
)  # fmt: skip
def test_a_deferral_sleeps_at_least_the_floor(opens_in: timedelta, slept: timedelta) -> None:
    now = datetime(2026, 3, 29, 1, 59, 59, tzinfo=UTC)
    assert window_wait(now + opens_in, now) == slept
    assert DEFER_FLOOR >= timedelta(minutes=1)


async def test_a_window_that_never_seems_to_open_sleeps_the_floor_each_time(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send window computed to open "now" (a DST or clock edge) three times running: each
    deferral sleeps the floor, not a second, so the journey does not spin."""
    await add_integration(api, section)
    window = {"start": "09:00", "end": "21:00", "outside": "wait"}
    cid = await create_campaign(api, section, cart_campaign(name="Edge", wait="PT1H", send_window=window))
    deferrals: list[datetime] = []
    real = journey_activities._window_defer

    def opens_now(spec: CampaignSpec, user: User, as_of: datetime) -> datetime | None:
        if spec.name != "Edge":
            return real(spec, user, as_of)
        if len(deferrals) < 3:
            deferrals.append(as_of)
            return as_of  # "opens" at once: not in the future
        return None

    monkeypatch.setattr(journey_activities, "_window_defer", opens_now)
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 1, result
    assert len(deferrals) == 3
    sent_at = next(d.at for d in result.decisions if d.outcome == "sent")
    gaps = [b - a for a, b in zip(deferrals, [*deferrals[1:], sent_at], strict=True)]
    assert all(g >= DEFER_FLOOR for g in gaps), gaps
    events = await _replays(journey_handle(env.client, section, cid, uid))
    assert DEFER_FLOOR_PATCH.encode() in _patches(events)
    timers = [e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() for e in events
              if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]  # fmt: skip
    assert timers[1:] == [DEFER_FLOOR] * 3, timers  # the trigger wait, then one floor per deferral


# ---------------------------------------------------------------- 4. trigger and exit in one request


def test_a_new_journeys_start_carries_the_exits_that_follow_it_up_to_the_next_trigger() -> None:
    enrolled = trigger_input("sec", "cmp", 1, "usr", timedelta(hours=1), True, timedelta(seconds=10))
    enrolled.enrollment = Enrollment(journey_id="j1", plan=JourneyPlan(variation_id="a", variation_name="A"))

    def cmd(action: Literal["trigger", "exit"], event_id: str, inp: JourneyInput | None = None) -> JourneyCommand:
        reason = "purchased" if action == "exit" else None
        return JourneyCommand(action=action, workflow_id="w", event_id=event_id, campaign_id="cmp", reason=reason,
                              input=inp)  # fmt: skip

    retrigger = enrolled.model_copy(update={"enrollment": None})
    group = [cmd("trigger", "e1", enrolled), cmd("exit", "e2"), cmd("trigger", "e3", retrigger), cmd("exit", "e4")]
    out = with_exits_at_start(group)
    assert [c.event_id for c in out] == ["e1", "e2", "e3", "e4"]  # every exit is still signalled, in order
    assert out[0].input is not None and [e.event_id for e in out[0].input.exits] == ["e2"]
    assert out[2].input is not None and out[2].input.exits == []  # a re-trigger starts nothing to carry them
    assert group[0].input is not None and group[0].input.exits == []  # the stored command is left as it was


async def test_a_test_users_trigger_and_purchase_in_one_request_send_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A test user's waits pass at once; an add-to-cart and a purchase in one request still end the
    journey before step 0 (the exit travels with the start), as they do for a real user."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    for _ in range(3):  # the race lost only sometimes before the fix
        dyid, uid = await reachable_user(api, section)
        flagged = await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)
        assert flagged.status_code == 200, flagged.text
        await collect(api, section, dyid, add_to_cart("sku-1"), purchase([("sku-1", 10.0)]))
        result = await journey_result(env.client, section, cid, uid)
        assert (result.status, result.exit_reason, result.sent) == ("exited", "purchased", 0), result
        events = await _replays(journey_handle(env.client, section, cid, uid))
        assert START_EXITS_PATCH.encode() in _patches(events)

    async def nothing_sent() -> None:
        assert await outbox(api, section) == []

    await eventually(nothing_sent, timeout=2)
