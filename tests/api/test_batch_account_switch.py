"""One request whose events switch person part-way (a shared device or kiosk): each person's events
act on their own journeys. A journey the request enrolled for the first person was handed to every
later event, so the second person's add-to-cart re-triggered the first person's journey (and they got
none) and their purchase exited it. A login that merges the request's anonymous user into the known
person still carries the journey over: it is that person's."""

from __future__ import annotations

from typing import Any

import httpx
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Event, Journey
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    login,
    new_dyid,
    purchase,
)
from workflows.ids import journey_workflow_id


async def _user_id(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> str:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _commands(store: Store, event_id: str) -> list[dict[str, Any]]:
    with store.session() as s:
        ev = s.get(Event, event_id)
        assert ev is not None
        return list(ev.commands)


def _journeys(store: Store, campaign_id: str) -> list[Journey]:
    with store.session() as s:
        return list(s.exec(select(Journey).where(Journey.campaign_id == campaign_id)).all())


async def _email_user(api: httpx.AsyncClient, sec: SectionKeys, email: str) -> str:
    """The user id of whoever logged in with `email` (their CUID is the email's hash)."""
    cuid = login(email)["properties"]["hashedEmail"]
    return await _user_id(api, sec, cuid)


async def test_second_persons_add_to_cart_starts_their_own_journey(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    ack = await collect(api, section, new_dyid(), login("q1@example.com"), add_to_cart("sku-1"),
                        login("q2@example.com"), add_to_cart("sku-2"))  # fmt: skip
    q1, q2 = await _email_user(api, section, "q1@example.com"), await _email_user(api, section, "q2@example.com")
    assert q1 != q2
    [first] = [c for c in _commands(store, ack["event_ids"][1]) if c["action"] == "trigger"]
    [second] = [c for c in _commands(store, ack["event_ids"][3]) if c["action"] == "trigger"]
    assert first["workflow_id"] == journey_workflow_id(section.id, cid, q1)
    assert second["workflow_id"] == journey_workflow_id(section.id, cid, q2), second
    assert second["input"]["user_id"] == q2 and second["input"]["enrollment"] is not None
    active = {j.user_id: j.workflow_id for j in _journeys(store, cid) if j.status == "active"}
    assert active == {q1: first["workflow_id"], q2: second["workflow_id"]}


async def test_second_persons_purchase_leaves_first_persons_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    ack = await collect(api, section, new_dyid(), login("x@example.com"), add_to_cart("sku-1"),
                        login("y@example.com"), purchase([("sku-9", 5.0)]))  # fmt: skip
    x = await _email_user(api, section, "x@example.com")
    wid = journey_workflow_id(section.id, cid, x)
    assert all(c["workflow_id"] != wid for c in _commands(store, ack["event_ids"][3]))
    desc = await env.client.get_workflow_handle(wid).describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING
    assert [j.status for j in _journeys(store, cid) if j.user_id == x] == ["active"]


async def test_merge_mid_request_carries_the_journey_to_the_person(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """An anonymous cart then a login of a known customer (merged into them): the customer's next
    add-to-cart in the same request re-triggers the journey the cart started, not a second one."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    await collect(api, section, new_dyid(), login("known@example.com"))
    known = await _email_user(api, section, "known@example.com")
    dyid = new_dyid()
    ack = await collect(api, section, dyid, add_to_cart("sku-1"), login("known@example.com"),
                        add_to_cart("sku-2", cart=[("sku-1", 10.0), ("sku-2", 10.0)]))  # fmt: skip
    assert await _user_id(api, section, dyid) == known
    [first] = [c for c in _commands(store, ack["event_ids"][0]) if c["action"] == "trigger"]
    [again] = [c for c in _commands(store, ack["event_ids"][2]) if c["action"] == "trigger"]
    assert again["workflow_id"] == first["workflow_id"] and again["input"]["enrollment"] is None, again
    assert [(j.user_id, j.status) for j in _journeys(store, cid)] == [(known, "active")]


async def test_journey_enrolled_before_a_merge_belongs_to_the_person_in_a_later_request(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """[add-to-cart on a new device, login of a known customer]: the journey row written at the end
    of the request is the customer's (the merge re-pointed rows before it was written), so the
    customer's next request re-triggers it instead of starting a second journey (two reminders)."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    await collect(api, section, new_dyid(), login("later@example.com"))
    known = await _email_user(api, section, "later@example.com")
    dyid = new_dyid()
    ack = await collect(api, section, dyid, add_to_cart("sku-1"), login("later@example.com"))
    [first] = [c for c in _commands(store, ack["event_ids"][0]) if c["action"] == "trigger"]
    assert [(j.user_id, j.status) for j in _journeys(store, cid)] == [(known, "active")]
    ack = await collect(api, section, dyid, add_to_cart("sku-2", cart=[("sku-1", 10.0), ("sku-2", 10.0)]))
    [again] = [c for c in _commands(store, ack["event_ids"][0]) if c["action"] == "trigger"]
    assert again["workflow_id"] == first["workflow_id"] and again["input"]["enrollment"] is None, again
    assert len(_journeys(store, cid)) == 1


async def test_merge_mid_request_into_a_person_with_a_journey_keeps_one(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """The known customer already has a journey running: after the merge, the next add-to-cart of
    the request sees both and exits the duplicate (it re-triggered the request's own journey only,
    and the customer's ran on beside it: two reminders)."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    await collect(api, section, new_dyid(), login("both@example.com"), add_to_cart("sku-0"))
    known = await _email_user(api, section, "both@example.com")
    ack = await collect(api, section, new_dyid(), add_to_cart("sku-1"), login("both@example.com"),
                        add_to_cart("sku-2", cart=[("sku-1", 10.0), ("sku-2", 10.0)]))  # fmt: skip
    [started] = [c for c in _commands(store, ack["event_ids"][0]) if c["action"] == "trigger"]
    last = _commands(store, ack["event_ids"][2])
    kept = journey_workflow_id(section.id, cid, known)
    assert [(c["action"], c["workflow_id"]) for c in last if c["action"] == "trigger"] == [("trigger", kept)]
    assert [(c["workflow_id"], c["reason"]) for c in last if c["action"] == "exit"] == [
        (started["workflow_id"], "merged_duplicate")
    ]
