"""A journey whose workflow an operator terminated (`temporal workflow terminate`) keeps its store row
active. The person's next trigger in the campaign then sends no enrollment (the store has an active
journey of that workflow id), so its signal-with-start starts a run that enrolls itself, a new row.
Before, the old row stayed active for ever: two open journeys of one workflow id, the old one
shown with the new run's live state and counted by priority and exits. Now the run that enrolls
itself ends every other active row of its workflow id (Temporal runs one execution per workflow
id, so their runs are closed): `exited`, reason `workflow_closed`; a journey whose trigger's
dispatch has not completed (its start on its way, or its withdrawal as merged) is left alone.

Also: exit and give-up entries of the decision trace name the step as the campaign does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment

from activities.journey import JourneyActivities
from api.deps import AppState
from api.ingestion import accept, withdraw_enrollments
from api.journeys import dispatch_all
from domain.events import EventRequest, normalize_event
from domain.caps import CapPolicy
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
    purchase,
    reachable_user,
    step,
    stored_journeys,
)
from workflows.models import GiveUpStepRequest


async def _dispatched(store: Store, event_ids: list[str]) -> None:
    async def check() -> None:  # the API marks dispatched events in batches (api/dispatch_marks.py)
        with store.session() as s:
            assert all(e.dispatched for e in s.exec(select(Event).where(col(Event.id).in_(event_ids))).all())

    await eventually(check)


async def test_a_trigger_after_a_terminated_workflow_leaves_one_active_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        ack = await collect(api, section, dyid, add_to_cart("sku-1"))
        await _dispatched(store, ack["event_ids"])  # its start went through (a start on its way is not ended)
        await journey_handle(env.client, section, cid, uid).terminate("operator")
        [old] = stored_journeys(store, cid, uid)
        assert old.status == "active"  # what the operator's terminate leaves behind

        await collect(api, section, dyid, add_to_cart("sku-2"))

        async def two_rows() -> list[Journey]:
            rows = stored_journeys(store, cid, uid)
            assert len(rows) == 2, rows  # the new run enrolled itself
            return rows

        first, second = await eventually(two_rows)
        assert first.id == old.id
        assert [r.status for r in (first, second)] == ["exited", "active"]
        assert first.exit_reason == "workflow_closed" and first.ended_at is not None, first
        assert second.workflow_id == first.workflow_id

        async def live_only_on_the_new_journey() -> dict[str, Any]:
            r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
            assert r.status_code == 200, r.text
            by_id = {j["id"]: j for j in r.json()}
            assert by_id[second.id]["live"] is not None, by_id
            return by_id

        by_id = await eventually(live_only_on_the_new_journey)
        assert by_id[first.id]["status"] == "exited" and by_id[first.id]["live"] is None, by_id[first.id]


async def test_exit_and_give_up_trace_entries_name_the_step(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=[step("Gentle nudge")]))
    dyid, uid = await reachable_user(api, section)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        [row] = stored_journeys(store, cid, uid)
        # A step that ran out of its budget before it decided anything (recorded by the worker).
        activities = JourneyActivities(store, CapPolicy(10, timedelta(days=1)), timedelta(hours=1))
        activities.give_up_step(GiveUpStepRequest(
            journey_id=row.id, decision_key=f"{row.id}:0", step_index=0, as_of=datetime.now(UTC), reason="budget",
        ))  # fmt: skip
        await collect(api, section, dyid, purchase([("sku-1", 10.0)]))

        async def exited() -> list[dict[str, Any]]:
            r = await api.get(f"/api/v1/journeys/{row.id}", headers=section.mgmt)
            assert r.status_code == 200, r.text
            trace = list(r.json()["decisions"])
            assert {d["outcome"] for d in trace} == {"skipped", "exited"}, trace
            return trace

        trace = await eventually(exited)
    assert {(d["outcome"], d["step_name"]) for d in trace} == {("skipped", "Gentle nudge"), ("exited", "Gentle nudge")}


async def test_a_journey_whose_start_is_on_its_way_is_withdrawn_not_ended(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """Concurrent first triggers: one request enrolls at its trigger, another (seeing that row active)
    overtakes its dispatch and starts a run that enrolls itself. The first row is not taken for a
    closed run's: its dispatch finds the run and withdraws it as merged."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    state = AppState(settings=settings, store=store, temporal=env.client)
    body = EventRequest.model_validate({"user": {"dyid": dyid, "active_consent_accepted": True},
                                        "events": [add_to_cart("sku-1")]})  # fmt: skip
    with env.with_time_skipping_disabled():
        first = accept(store, state.box, settings, section.id, body, [normalize_event(0, e) for e in body.events])
        await collect(api, section, dyid, add_to_cart("sku-2"))  # overtakes: starts a run that enrolls itself

        async def two_rows() -> list[Journey]:
            rows = stored_journeys(store, cid, uid)
            assert len(rows) == 2, rows
            return rows

        pending, own = await eventually(two_rows)
        assert [r.status for r in (pending, own)] == ["active", "active"]
        done = await dispatch_all(env.client, settings.task_queue, first.commands)
        withdraw_enrollments(store, done.unstarted)
        statuses = {r.id: r.status for r in stored_journeys(store, cid, uid)}
    assert statuses == {pending.id: "merged", own.id: "active"}, statuses
