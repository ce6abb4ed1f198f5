"""A person keeps the variation of their first journey in a campaign while the spec still has it:
an edit of the variations or their shares, or a merge of a device's user into the person, never
moves them to another arm of the test (the report counts them in their first journey's
variation). Only a person whose variation was removed is allocated again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from domain.allocation import allocate
from domain.campaign import CampaignSpec
from store.engine import Store
from store.tables import Journey
from tests.helpers import (
    SectionKeys,
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
    step,
    sync_cart,
)


def _variations(*shares: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"id": vid, "name": vid.upper(), "share": share, "steps": [step("S")]} for vid, share in shares]


def _hash(cid: str, spec: dict[str, Any], uid: str) -> str:
    """The variation the bare hash gives the user under `spec` (what allocation did before)."""
    return allocate(cid, uid, CampaignSpec.model_validate(spec).variations).id


async def _user_id(api: httpx.AsyncClient, section: SectionKeys, dyid: str) -> str:
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _new_user(api: httpx.AsyncClient, section: SectionKeys) -> tuple[str, str]:
    """An anonymous user who triggered nothing yet: (dyid, user id)."""
    dyid = new_dyid()
    await collect(api, section, dyid, sync_cart([]))
    return dyid, await _user_id(api, section, dyid)


async def _pick(api: httpx.AsyncClient, section: SectionKeys, wanted: Callable[[str], bool]) -> tuple[str, str]:
    """A new user whose id satisfies `wanted` (user ids are random: a few tries)."""
    for _ in range(80):
        dyid, uid = await _new_user(api, section)
        if wanted(uid):
            return dyid, uid
    raise AssertionError("no user id with the wanted allocation in 80 tries")


def _variations_of(store: Store, cid: str, uid: str) -> list[str]:
    """The person's journeys' variations in the campaign, oldest first."""
    with store.session() as s:
        rows = s.exec(select(Journey).where(Journey.campaign_id == cid, Journey.user_id == uid)).all()
    return [j.variation_id for j in sorted(rows, key=lambda j: j.triggered_at)]


async def _journey_of(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, cid: str, dyid: str, uid: str
) -> None:
    """Trigger a journey of the user and let it run to its end (time skipped)."""
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await journey_result(env.client, section, cid, uid)


async def _edit(api: httpx.AsyncClient, section: SectionKeys, cid: str, spec: dict[str, Any]) -> None:
    r = await api.put(f"/api/v1/campaigns/{cid}", json=spec, headers=section.mgmt)
    assert r.status_code == 200, r.text


async def _report_users(api: httpx.AsyncClient, section: SectionKeys, cid: str) -> dict[str, int]:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt)
    assert r.status_code == 200, r.text
    return {v["id"]: v["users"] for v in r.json()["variations"]}


async def test_removing_a_variation_reallocates_only_its_users(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    before = cart_campaign(variations=_variations(("a", 30), ("b", 30), ("c", 40)))
    after = cart_campaign(variations=_variations(("a", 50), ("b", 50)))  # c removed
    cid = await create_campaign(api, section, before)
    # A user of each variation; the b user is one the bare hash would move to a after the edit.
    users = {
        "a": await _pick(api, section, lambda uid: _hash(cid, before, uid) == "a"),
        "b": await _pick(api, section, lambda uid: _hash(cid, before, uid) == "b" and _hash(cid, after, uid) == "a"),
        "c": await _pick(api, section, lambda uid: _hash(cid, before, uid) == "c"),
    }
    for dyid, uid in users.values():
        await _journey_of(api, env, section, cid, dyid, uid)
    await _edit(api, section, cid, after)
    for dyid, uid in users.values():
        await _journey_of(api, env, section, cid, dyid, uid)

    _, c_uid = users["c"]
    got = {first: _variations_of(store, cid, uid) for first, (_, uid) in users.items()}
    assert got == {"a": ["a", "a"], "b": ["b", "b"], "c": ["c", _hash(cid, after, c_uid)]}, got
    # Each person counts once, in their first journey's variation.
    assert await _report_users(api, section, cid) == {"a": 1, "b": 1, "c": 1}


async def test_a_share_change_moves_nobody(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    before = cart_campaign(variations=_variations(("a", 50), ("b", 50)))
    after = cart_campaign(variations=_variations(("a", 10), ("b", 90)))
    cid = await create_campaign(api, section, before)
    dyid, uid = await _pick(api, section, lambda u: _hash(cid, before, u) == "a" and _hash(cid, after, u) == "b")
    await _journey_of(api, env, section, cid, dyid, uid)
    await _edit(api, section, cid, after)
    await _journey_of(api, env, section, cid, dyid, uid)
    assert _variations_of(store, cid, uid) == ["a", "a"]


async def test_a_held_out_person_stays_held_out_when_the_shares_change(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """The control is a variation like the others: its people stay out of the test."""
    control = {"id": "ctl", "name": "Holdout", "share": 50, "control": True}
    before = cart_campaign(variations=[control, *_variations(("a", 50))])
    after = cart_campaign(variations=[{**control, "share": 10}, *_variations(("a", 90))])
    cid = await create_campaign(api, section, before)
    dyid, uid = await _pick(api, section, lambda u: _hash(cid, before, u) == "ctl" and _hash(cid, after, u) == "a")
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await _edit(api, section, cid, after)
    await collect(api, section, dyid, add_to_cart("sku-2"))
    assert _variations_of(store, cid, uid) == ["ctl"]


async def test_after_a_merge_the_persons_first_journey_decides(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A device's journey, started before the device logged in as a known person, is the person's
    first journey once merged: the person's next journey is in its variation, not in the one the
    hash gives the person's own id."""
    spec = cart_campaign(variations=_variations(("a", 50), ("b", 50)))
    cid = await create_campaign(api, section, spec)
    person_dyid = new_dyid()
    await collect(api, section, person_dyid, login(email_for(person_dyid)))
    person = await _user_id(api, section, person_dyid)
    dyid, device_user = await _pick(api, section, lambda u: _hash(cid, spec, u) != _hash(cid, spec, person))
    await _journey_of(api, env, section, cid, dyid, device_user)  # anonymous: the device user's variation
    first = _hash(cid, spec, device_user)
    await collect(api, section, dyid, login(email_for(person_dyid)))
    assert await _user_id(api, section, dyid) == person  # merged, with the journey row
    await _journey_of(api, env, section, cid, person_dyid, person)
    assert _variations_of(store, cid, person) == [first, first]
    assert await _report_users(api, section, cid) == {"a": int(first == "a"), "b": int(first == "b")}


async def test_a_merge_keeps_the_journey_in_the_persons_first_variation(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Both the device and the person had a journey of the campaign, in different arms, when the
    device logged in: the device's journey came first, so its arm is the person's (the report
    counts them there) and it goes on; the person's own is the duplicate that exits. Keeping the
    person's own had them counted in one arm and messaged from the other."""
    spec = cart_campaign(wait="PT2H", variations=_variations(("a", 50), ("b", 50)))
    cid = await create_campaign(api, section, spec)
    person_dyid = new_dyid()
    await collect(api, section, person_dyid, login(email_for(person_dyid)))
    person = await _user_id(api, section, person_dyid)
    dyid, device_user = await _pick(api, section, lambda u: _hash(cid, spec, u) != _hash(cid, spec, person))
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))
        await eventually(lambda: _started(store, cid, device_user))
        await collect(api, section, person_dyid, add_to_cart("sku-2"))
        await eventually(lambda: _started(store, cid, person))
        await collect(api, section, dyid, login(email_for(person_dyid)))
    own = await journey_result(env.client, section, cid, person)
    assert (own.status, own.exit_reason) == ("exited", "merged_duplicate"), own
    kept = journey_handle(env.client, section, cid, device_user)
    assert (await kept.describe()).status == WorkflowExecutionStatus.RUNNING
    await kept.terminate("test done")
    first = _hash(cid, spec, device_user)
    assert await _report_users(api, section, cid) == {"a": int(first == "a"), "b": int(first == "b")}


async def _started(store: Store, cid: str, uid: str) -> None:
    assert _variations_of(store, cid, uid), uid
