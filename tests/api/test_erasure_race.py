"""An erasure (`DELETE /api/v1/users/{ref}`) racing requests of the same person (PostgreSQL, where
requests run side by side; on SQLite every transaction holds the write lock, so the race cannot
happen there and the test only checks the outcome).

The erasure takes ingestion's identity locks of the person (store/erasure.py `_lock_person`): a
request of theirs either completed before it (and is erased with the rest) or runs after it and
finds no one (a new, unrelated user). Before, a request accepted during the erasure left its event,
cart entry or identifiers under the tombstone id, or blanked-then-refilled its cart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select

from store import erasure
from store.cart_tables import CartEntry
from store.engine import Store
from store.tables import Device, Event, User, UserIdentifier, now_utc
from tests.helpers import SectionKeys, add_integration, add_to_cart, email_for, login, new_dyid, reachable_user


async def _collect(api: httpx.AsyncClient, section: SectionKeys, dyid: str, *events: dict[str, Any],
                   delay: float = 0) -> int:  # fmt: skip
    await asyncio.sleep(delay)
    body = {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": list(events)}
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    return r.status_code


async def _erase(api: httpx.AsyncClient, section: SectionKeys, user_id: str) -> int:
    r = await api.delete(f"/api/v1/users/{user_id}", headers=section.mgmt)
    return r.status_code


def _left_with(store: Store, section: SectionKeys, user_id: str) -> dict[str, int]:
    """What still names or describes the erased user: all zero for a clean tombstone."""
    with store.session() as s:
        def count(table: Any) -> int:
            q = select(func.count()).select_from(table).where(table.section_id == section.id, table.user_id == user_id)
            return int(s.exec(q).one())

        user = s.get(User, user_id)
        assert user is not None  # the tombstone stays
        return {
            "events": count(Event), "cart_entries": count(CartEntry), "identifiers": count(UserIdentifier),
            "devices": count(Device), "cart": len(user.cart), "cuid": int(user.cuid is not None),
        }  # fmt: skip


async def test_requests_of_the_person_during_the_erasure_leave_nothing_under_the_tombstone(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    erase_identity = erasure._erase_identity

    def slowly(*args: Any) -> None:
        # A slow erasure (a large person, a busy database): requests of the person arrive while
        # its transaction is open, deterministically rather than by luck of timing.
        time.sleep(0.2)
        erase_identity(*args)

    monkeypatch.setattr(erasure, "_erase_identity", slowly)
    await add_integration(api, section)
    people = [await reachable_user(api, section) for _ in range(4)]
    for dyid, _ in people:  # a cart, so the cart index has entries to erase
        assert await _collect(api, section, dyid, add_to_cart("sku-0")) == 202
    calls = []
    for dyid, user_id in people:
        calls.append(_erase(api, section, user_id))
        for i in range(12):
            # Cart events of the person's device, some logging in again with their email: before,
            # during and after the erasure's transaction.
            events = [add_to_cart(f"sku-{i}")] + ([login(email_for(dyid))] if i % 3 == 0 else [])
            calls.append(_collect(api, section, dyid, *events, delay=0.03 * i))
    codes = await asyncio.gather(*calls, return_exceptions=True)
    left = {user_id: _left_with(store, section, user_id) for _, user_id in people}
    assert {u: {k: n for k, n in found.items() if n} for u, found in left.items()} == {u: {} for _, u in people}
    assert [c for c in codes if c not in (200, 202)] == []  # no deadlock, no duplicate key
    with store.session() as s:
        # Requests after the erasure made a new user of the device (and of the email, by login).
        for dyid, user_id in people:
            device = s.get(Device, (section.id, dyid))
            assert device is None or device.user_id != user_id
        stray = s.exec(
            select(func.count()).select_from(Event).where(col(Event.user_id).in_([u for _, u in people]))
        ).one()
    assert stray == 0


async def test_a_person_merged_into_another_user_meanwhile_is_looked_up_again(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """The erasure looked up an anonymous person by their dyid; before its transaction, a login on
    that device merged them into the email's owner, who now holds their events. Erasing the old id
    would erase nothing of them: the transaction erases nothing and says so (`PersonChanged`), and
    the route looks the ref up again (the owner, whose journeys it then ends too)."""
    await add_integration(api, section)
    owner_dyid, owner_id = await reachable_user(api, section)
    dyid = new_dyid()
    assert await _collect(api, section, dyid, add_to_cart("sku-1")) == 202
    with store.session() as s:
        person = erasure.find_person(s, section.id, dyid)
    assert person is not None and person.user_id != owner_id
    assert await _collect(api, section, dyid, login(email_for(owner_dyid))) == 202  # merged into the owner
    with pytest.raises(erasure.PersonChanged), store.session() as s:
        erasure.erase(s, person, [], now_utc())
    assert _left_with(store, section, owner_id)["events"] > 0  # nothing erased
    r = await api.delete(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == owner_id
    left = {k: n for k, n in _left_with(store, section, owner_id).items() if n}
    assert left == {}


async def test_an_identity_added_while_the_erasure_locks_is_locked_too(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What to lock is read before the locks and again under them; a device or identifier that
    appeared in between (a login on a new device) makes it release and take the larger set in
    one call, then erase as usual."""
    await add_integration(api, section)
    _, user_id = await reachable_user(api, section)
    person_lock_keys = erasure.person_lock_keys
    rounds: list[set[str]] = []

    def growing(s: Any, section_id: str, ids: list[str]) -> set[str]:
        keys = person_lock_keys(s, section_id, ids) | ({"id/new-device"} if rounds else set())
        rounds.append(keys)
        return keys

    monkeypatch.setattr(erasure, "person_lock_keys", growing)
    r = await api.delete(f"/api/v1/users/{user_id}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert len(rounds) == 3 and "id/new-device" not in rounds[0] and rounds[1] == rounds[2]
    assert {k: n for k, n in _left_with(store, section, user_id).items() if n} == {}
