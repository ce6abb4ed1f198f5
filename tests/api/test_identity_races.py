"""Concurrent requests of one device or one person (PostgreSQL, where requests run side by side;
SQLite's write lock serialises them anyway): no duplicate-key 500s, one user per device and per
CUID, and nothing written under an id a concurrent login merged away."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlmodel import col, func, select

from store.engine import Store
from store.identity_tables import UserAlias
from store.tables import Device, Event, OptIn, User
from tests.helpers import SectionKeys, add_integration, add_to_cart, login


async def _post(api: httpx.AsyncClient, section: SectionKeys, dyid: str, *events: dict[str, object]) -> int:
    body = {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": list(events)}
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    return r.status_code


async def test_a_new_device_sending_at_once_becomes_one_user(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    dyids = [f"d-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    codes = await asyncio.gather(*(_post(api, section, d, add_to_cart(f"sku-{i}")) for d in dyids for i in range(6)))
    assert set(codes) == {202}, codes
    with store.session() as s:
        for dyid in dyids:
            device = s.get(Device, (section.id, dyid))
            assert device is not None
            owners = s.exec(select(Event.user_id).where(Event.section_id == section.id).distinct()).all()
            assert device.user_id in owners
        users = s.exec(select(func.count()).select_from(User).where(User.section_id == section.id)).one()
        assert users == len(dyids), users


async def test_one_person_logging_in_on_several_devices_at_once_is_one_user(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    people = [f"p{uuid.uuid4().hex[:8]}@example.com" for _ in range(3)]
    devices = {p: [f"d-{uuid.uuid4().hex[:8]}" for _ in range(4)] for p in people}
    # Each device is first seen anonymously with a cart, so every login below merges a user.
    codes = await asyncio.gather(*(_post(api, section, d, add_to_cart("sku-1")) for p in people for d in devices[p]))
    assert set(codes) == {202}, codes
    codes = await asyncio.gather(*(
        _post(api, section, d, login(p), add_to_cart("sku-2")) for p in people for d in devices[p]
    ))  # fmt: skip
    assert set(codes) == {202}, codes
    with store.session() as s:
        for person in people:
            owners = {s.get(Device, (section.id, d)).user_id for d in devices[person]}  # type: ignore[union-attr]
            assert len(owners) == 1, owners
            (owner,) = owners
            merged = set(s.exec(select(UserAlias.alias_id).where(UserAlias.canonical_id == owner)).all())
            # Every event of the person's devices sits with the person: none under a merged-away id.
            stray = s.exec(
                select(func.count()).select_from(Event).where(col(Event.user_id).in_(merged))
            ).one()
            assert stray == 0, (person, stray)
        cuids = s.exec(select(User.cuid, func.count()).where(User.section_id == section.id, col(User.cuid).is_not(None))
                       .group_by(User.cuid)).all()  # fmt: skip
        assert len(cuids) == len(people) and all(n == 1 for _, n in cuids), cuids


async def test_concurrent_opt_ins_of_one_new_email_are_one_row(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    emails = [f"o{uuid.uuid4().hex[:8]}@example.com" for _ in range(4)]

    async def opt_in(email: str) -> int:
        body = {"identifier": {"type": "email", "value": email}}
        r = await api.post("/v2/userdata/channels/email/opt-in", json=body, headers=section.ing)
        return r.status_code

    codes = await asyncio.gather(*(opt_in(e) for e in emails for _ in range(6)))
    assert set(codes) == {200}, codes
    with store.session() as s:
        rows = s.exec(select(func.count()).select_from(OptIn).where(OptIn.section_id == section.id)).one()
    assert rows == len(emails), rows
