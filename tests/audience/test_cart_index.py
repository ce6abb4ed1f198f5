"""The cart index: kept equal to carts by ingestion and identity merges, and used by feed-driven
campaigns to find who has a product in their cart."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store import cart_index
from store.cart_tables import CartEntry
from store.engine import Store
from store.tables import Send
from tests.audience.feed_helpers import batch_campaign, create_feed, csv_bytes, run_result, upload_feed
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    collect,
    create_campaign,
    email_for,
    login,
    new_dyid,
    purchase,
    reachable_user,
    sync_cart,
)


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _entries(store: Store, section_id: str) -> set[tuple[str, str]]:
    with store.session() as s:
        rows = s.exec(select(CartEntry).where(CartEntry.section_id == section_id)).all()
    return {(e.user_id, e.sku) for e in rows}


async def _user_id(api: httpx.AsyncClient, sec: SectionKeys, dyid: str) -> str:
    r = await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def test_price_drop_finds_a_merged_users_cart_and_not_an_emptied_one(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A cart filled anonymously then merged into the person at login is found under the person; carts
    emptied by a purchase or a sync are not; the index equals a rebuild from the carts."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, batch_campaign("price_drop"))
    feed = await create_feed(api, section)
    await upload_feed(api, env.client, section, feed, csv_bytes("sku,name,price", "sku-1,Shoe,100", "sku-2,Hat,50"))

    person_dyid, person = await reachable_user(api, section)  # known person, cart empty
    device = new_dyid()  # the same person on another device, anonymous at first
    await collect(api, section, device, add_to_cart("sku-1", 100, cart=[("sku-1", 100), ("sku-2", 50)]))
    anonymous = await _user_id(api, section, device)
    assert {(anonymous, "sku-1"), (anonymous, "sku-2")} <= _entries(store, section.id)
    await collect(api, section, device, login(email_for(person_dyid)))
    assert await _user_id(api, section, device) == person  # merged into the person

    buyer_dyid, buyer = await reachable_user(api, section)
    await collect(api, section, buyer_dyid, add_to_cart("sku-1", 100))
    await collect(api, section, buyer_dyid, purchase([("sku-1", 100)]))
    emptier_dyid, emptier = await reachable_user(api, section)
    await collect(api, section, emptier_dyid, add_to_cart("sku-1", 100))
    await collect(api, section, emptier_dyid, sync_cart([]))

    entries = _entries(store, section.id)
    assert entries == {(person, "sku-1"), (person, "sku-2")}, entries
    with store.session() as s:
        assert cart_index.holders(s, section.id, {"sku-1"}) == {person: ["sku-1"]}
        cart_index.rebuild(s, section.id)
    assert _entries(store, section.id) == entries

    summary = await upload_feed(
        api, env.client, section, feed, csv_bytes("sku,name,price", "sku-1,Shoe,80", "sku-2,Hat,50")
    )
    (run_id,) = summary.runs
    assert (await run_result(env.client, run_id)).sent == 1
    with store.session() as s:
        sends = s.exec(select(Send).where(Send.campaign_id == cid)).all()
    assert [x.user_id for x in sends] == [person]
    assert {buyer, emptier, anonymous}.isdisjoint({x.user_id for x in sends})
