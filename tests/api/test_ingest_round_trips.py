"""The statements a returning shopper's add-to-cart costs: the hot path of ingestion.

Each statement is a database round trip on the request's path, and on a loaded machine each
round trip waits for a core (docs/performance.md, "Re-triggers"). This pins the ones a
re-trigger needs, so a change that adds one is a decision, not an accident: resolve the user;
read the running journeys with the "events still queued" flag; look for a click to attribute
the add-to-cart to (identified shoppers); index the new cart item; store the event; write the
user once. Live campaigns come from the per-process cache (`store/campaigns.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlmodel import select

from store import campaigns
from store.cart_tables import CartEntry
from store.engine import Store
from store.tables import Campaign, Journey
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
    reachable_user,
    sync_cart,
)


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """The verb and table of each statement run on the store while inside, but for the
    dispatched marks (`api/dispatch_marks.py` writes them for many requests at once, whenever its
    interval comes round: no request's statement, and ingestion itself never updates an event)."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        words = sql.split()
        if words[0].upper() == "WITH":  # PostgreSQL's cohort row and counter bump: named by its last target
            words = sql[sql.upper().rindex("INSERT INTO") :].split()
        if words[0].upper() not in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            return  # BEGIN (SQLite's is a statement; psycopg's is not): one per transaction, as ever
        # A SELECT is named by its first column's table, the others by their target.
        table = next(w for w in words[1:] if w.upper() not in ("INTO", "FROM"))
        statement = words[0].upper() + " " + table.split(".")[0].strip('"(,')
        if statement != "UPDATE event":  # the dispatched marks: a background batch of earlier requests'
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", note)


def _cart(store: Store, user_id: str) -> set[str]:
    with store.session() as s:
        return set(s.exec(select(CartEntry.sku).where(CartEntry.user_id == user_id)).all())


async def test_a_retrigger_costs_six_statements(api: httpx.AsyncClient, section: SectionKeys, store: Store) -> None:
    """Six statements; on PostgreSQL before them the advisory lock on the request's identities, then the
    read of the users they name and the lock on those (`api/ingestion.py::_lock_users`)."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    with statements(store) as seen:
        ack = await collect(api, section, dyid, add_to_cart("sku-2", cart=[("sku-1", 10.0), ("sku-2", 10.0)]))
    assert ack["warnings"] == [], ack
    # The shopper is identified: the add-to-cart is checked for a click to attribute it to.
    expected = ["INSERT cartentry", "INSERT event", "SELECT device", "SELECT queued", "SELECT report_cohort", "UPDATE user"]
    if store.engine.dialect.name == "postgresql":  # the request's identity lock, then its users'
        assert seen[0].startswith("SELECT pg_advisory_xact_lock("), seen
        assert seen[1] == "SELECT device" and seen[2].startswith("SELECT pg_advisory_xact_lock("), seen
        seen = seen[3:]
    assert sorted(seen) == expected, seen
    assert _cart(store, uid) == {"sku-1", "sku-2"}


async def test_a_start_bumps_the_campaign_counter_last(api: httpx.AsyncClient, section: SectionKeys, store: Store) -> None:
    """The report counter of a campaign's hour is a row every start updates; its lock lasts until
    the commit, so the bump is the transaction's last statement (concurrent starts queued behind
    whatever came after it)."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="PT1H"))
    for dyid in (await reachable_user(api, section))[0], new_dyid():  # a known shopper, a first visit
        with statements(store) as seen:
            await collect(api, section, dyid, add_to_cart("sku-1"))
        assert "INSERT journey" in seen and seen[-1] == "INSERT report_rollup", seen


async def test_a_cart_change_rewrites_only_what_changed(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A changed cart deletes the entries that left it and adds the new ones; a purchase empties it."""
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    await collect(api, section, dyid, add_to_cart("sku-2", cart=[("sku-1", 10.0), ("sku-2", 10.0)]))
    with statements(store) as seen:
        await collect(api, section, dyid, sync_cart([("sku-2", 10.0), ("sku-3", 10.0)]))
    assert seen.count("DELETE cartentry") == 1 and seen.count("INSERT cartentry") == 1, seen
    assert _cart(store, uid) == {"sku-2", "sku-3"}
    with statements(store) as seen:
        await collect(api, section, dyid, sync_cart([("sku-3", 10.0)]))
    assert seen.count("DELETE cartentry") == 1 and "INSERT cartentry" not in seen, seen
    assert _cart(store, uid) == {"sku-3"}
    await collect(api, section, dyid, purchase([("sku-3", 10.0)]))
    assert _cart(store, uid) == set()


async def test_a_campaign_changed_elsewhere_is_seen_within_the_cache_time(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another API process's change (here: a direct write) reaches this process's ingestion once
    its cached live campaigns expire; a change through this process's API at once."""
    monkeypatch.setattr(campaigns, "LIVE_SECONDS", 0.3)
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    first, _ = await reachable_user(api, section)
    assert len((await collect(api, section, first, add_to_cart("sku-1")))["event_ids"]) == 1
    with store.session() as s:
        row = s.get(Campaign, cid)
        assert row is not None
        row.status = "paused"
        s.add(row)
    await asyncio.sleep(0.35)
    second, uid = await reachable_user(api, section)
    await collect(api, section, second, add_to_cart("sku-1"))
    assert _journey_count(store, cid, uid) == 0  # paused: no trigger
    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert r.status_code == 200, r.text
    await collect(api, section, second, add_to_cart("sku-2", cart=[("sku-1", 10.0), ("sku-2", 10.0)]))
    assert _journey_count(store, cid, uid) == 1  # the API's own change: no wait


def _journey_count(store: Store, campaign_id: str, user_id: str) -> int:
    with store.session() as s:
        return len(s.exec(select(Journey).where(Journey.campaign_id == campaign_id, Journey.user_id == user_id)).all())


async def test_a_first_visit_identified_mid_request_indexes_its_cart(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A new shopper's cart, then a login in the same request: the login writes the user early
    (merges and identifiers reference the row), and the cart must still reach the index."""
    dyid = new_dyid()
    await collect(api, section, dyid, add_to_cart("sku-1"), login("early@example.com"))
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert _cart(store, str(r.json()["id"])) == {"sku-1"}
