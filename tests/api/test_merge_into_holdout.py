"""A merge never messages a person held out of a campaign: the person's earliest allocation in the
campaign (the report's cohort) wins, so a treated journey joining a held-out person (or a person's
treated journey joining a device held out before it) ends `merged_into_holdout` in the merge's
transaction and sends nothing more. It sent "B1" to a holdout person, whose click and purchase then
counted in the holdout's enrolled conversions and as the treated arm's revenue (docs/campaigns.md)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from domain.allocation import allocate
from domain.campaign import CampaignSpec
from store.engine import Store
from store.tables import Journey, Send
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    eventually,
    journey_handle,
    journey_result,
    login,
    new_dyid,
    reachable_user,
    step,
    sync_cart,
)

SPEC = cart_campaign(wait="PT2H", variations=[
    {"id": "ctl", "name": "Holdout", "share": 50, "control": True},
    {"id": "b", "name": "B", "share": 50, "steps": [step("B1")]}])  # fmt: skip


def _arm(cid: str, uid: str) -> str:
    return allocate(cid, uid, CampaignSpec.model_validate(SPEC).variations).id


async def _user_id(api: httpx.AsyncClient, section: SectionKeys, dyid: str) -> str:
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _device(api: httpx.AsyncClient, section: SectionKeys, cid: str, arm: str) -> tuple[str, str]:
    """A new anonymous device user allocated to `arm` (user ids are random: a few tries)."""
    for _ in range(60):
        dyid = new_dyid()
        await collect(api, section, dyid, sync_cart([]))
        uid = await _user_id(api, section, dyid)
        if _arm(cid, uid) == arm:
            return dyid, uid
    raise AssertionError(f"no device allocated to {arm}")


async def _person(api: httpx.AsyncClient, section: SectionKeys, cid: str, arm: str) -> tuple[str, str]:
    """A new identified person, reachable by email, allocated to `arm`."""
    for _ in range(60):
        dyid, uid = await reachable_user(api, section)
        if _arm(cid, uid) == arm:
            return dyid, uid
    raise AssertionError(f"no person allocated to {arm}")


def _rows(store: Store, cid: str) -> list[Journey]:
    with store.session() as s:
        return list(s.exec(select(Journey).where(Journey.campaign_id == cid)).all())


def _sends(store: Store, cid: str) -> list[Send]:
    with store.session() as s:
        return list(s.exec(select(Send).where(Send.campaign_id == cid)).all())


async def _report_users(api: httpx.AsyncClient, section: SectionKeys, cid: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt)
    assert r.status_code == 200, r.text
    return {v["id"]: v["users"] for v in r.json()["variations"]}


async def _running(store: Store, cid: str, uid: str) -> None:
    assert any(j.user_id == uid and j.status == "active" for j in _rows(store, cid)), uid



async def _held_out_and_silent(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, cid: str, user: str
) -> None:
    """The person counts in the holdout alone: the treated journey (`user`'s workflow) exited at the
    merge, recorded on its row in the merge's transaction, having sent nothing."""
    rows = {(j.variation_id, j.status, j.exit_reason) for j in _rows(store, cid)}
    assert rows == {("ctl", "holdout", None), ("b", "exited", "merged_into_holdout")}, rows
    ended = await journey_result(env.client, section, cid, user)
    assert (ended.status, ended.exit_reason) == ("exited", "merged_into_holdout"), ended
    assert _sends(store, cid) == []
    assert await _report_users(api, section, cid) == {"ctl": 1, "b": 0}

async def test_a_device_journey_merged_into_a_held_out_person_ends_unsent(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, SPEC)
    person_dyid, person = await _person(api, section, cid, "ctl")
    await collect(api, section, person_dyid, add_to_cart("sku-1"))  # held out, ended at once
    dyid, device_user = await _device(api, section, cid, "b")
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-2"))
        await eventually(lambda: _running(store, cid, device_user))
        await collect(api, section, dyid, login(email_for(person_dyid)))
    assert await _user_id(api, section, dyid) == person
    # Recorded in the merge's transaction, before the exit signal reaches the workflow.
    assert {j.user_id for j in _rows(store, cid)} == {person}
    await _held_out_and_silent(api, env, section, store, cid, device_user)  # time skipped: B1 was due
    # The person triggering again stays held out: nothing starts.
    await collect(api, section, person_dyid, add_to_cart("sku-3"))
    assert len(_rows(store, cid)) == 2


async def test_a_persons_journey_ends_when_a_device_held_out_before_it_merges(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """The reverse: the device was held out first, so the merged person is held out (the report's
    cohort is the earliest journey) and their own treated journey ends."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, SPEC)
    dyid, device_user = await _device(api, section, cid, "ctl")
    await collect(api, section, dyid, add_to_cart("sku-1"))  # held out, ended at once
    person_dyid, person = await _person(api, section, cid, "b")
    with env.with_time_skipping_disabled():
        await collect(api, section, person_dyid, add_to_cart("sku-2"))
        await eventually(lambda: _running(store, cid, person))
        await collect(api, section, dyid, login(email_for(person_dyid)))
    await _held_out_and_silent(api, env, section, store, cid, person)


async def test_a_persons_earlier_treated_journey_goes_on_when_a_held_out_device_merges(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """The person was allocated first (to b): they stay in b, their journey runs on."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, SPEC)
    person_dyid, person = await _person(api, section, cid, "b")
    dyid, device_user = await _device(api, section, cid, "ctl")
    with env.with_time_skipping_disabled():
        await collect(api, section, person_dyid, add_to_cart("sku-1"))
        await eventually(lambda: _running(store, cid, person))
        await collect(api, section, dyid, add_to_cart("sku-2"))  # held out, ended at once
        await collect(api, section, dyid, login(email_for(person_dyid)))
        handle = journey_handle(env.client, section, cid, person)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        assert {(j.variation_id, j.status) for j in _rows(store, cid)} == {("b", "active"), ("ctl", "holdout")}
        await handle.terminate("test done")
    assert await _report_users(api, section, cid) == {"ctl": 0, "b": 1}


async def test_a_device_batching_its_trigger_and_login_into_a_held_out_person_sends_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """The device's journey is enrolled in the request that merges it: its row is written exited."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, SPEC)
    person_dyid, person = await _person(api, section, cid, "ctl")
    await collect(api, section, person_dyid, add_to_cart("sku-1"))  # held out, ended at once
    dyid, device_user = await _device(api, section, cid, "b")
    await collect(api, section, dyid, add_to_cart("sku-2"), login(email_for(person_dyid)))
    await _held_out_and_silent(api, env, section, store, cid, device_user)
