"""A person's login on device B (merging B's anonymous user into them) at the same moment as an
add-to-cart of the same SKU on their device A. The login locked device B, the CUID and its
identifiers, the add-to-cart only device A: neither locked the person, so on PostgreSQL they wrote
the person's user row and cart index in opposite orders and deadlocked (a load trial: ~42% of such
pairs answered a plain-text 500). Now every request also locks the users it resolved (the person,
and the anonymous user a login merges away) before its first write
(`api/ingestion.py::_lock_users`), and a deadlock or serialization failure left anyway is retried.

SQLite cannot race here (its write lock, taken by every transaction's `BEGIN IMMEDIATE`, runs the
requests one after another): there the test checks only the outcome of the same traffic.

Also: an exception no handler expects answers 500 in the API's JSON error shape, logged with its
traceback, telling the client nothing of the internals."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import col, func, select
from temporalio.testing import WorkflowEnvironment

from api import ingestion
from api.main import create_app
from settings import Settings
from store.cart_tables import CartEntry
from store.engine import Store
from store.identity_tables import UserAlias
from store.tables import Device, Event, Journey, User
from tests.helpers import SectionKeys, add_integration, add_to_cart, app_state, cart_campaign, create_campaign, login

PEOPLE = 40
SKU = "sku-same"


async def _send(api: httpx.AsyncClient, section: SectionKeys, dyid: str, event: dict[str, Any]) -> httpx.Response:
    body = {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": [event]}
    return await api.post("/v2/collect/user/event", json=body, headers=section.ing)


async def test_login_merging_a_device_while_the_person_carts_elsewhere(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    await create_campaign(api, section, cart_campaign())  # the add-to-cart reads the person's journeys
    tag = uuid.uuid4().hex[:8]
    answers: list[httpx.Response] = []

    async def person(i: int) -> tuple[str, str, str]:
        a, b, email = f"{tag}-{i}-a", f"{tag}-{i}-b", f"race-{tag}-{i}@example.com"
        answers.append(await _send(api, section, a, login(email)))  # the person, on device A
        answers.append(await _send(api, section, b, add_to_cart(SKU)))  # device B, anonymous, carts X
        # At once: B logs in (merging B's user into the person), A adds the same SKU.
        together = _send(api, section, b, login(email)), _send(api, section, a, add_to_cart(SKU))
        answers.extend(await asyncio.gather(*together))
        return a, b, email

    people = await asyncio.gather(*(person(i) for i in range(PEOPLE)))

    statuses = Counter(r.status_code for r in answers)
    assert statuses == {202: 4 * PEOPLE}, (statuses, [r.text for r in answers if r.status_code != 202][:3])
    sent = [event_id for r in answers for event_id in r.json()["event_ids"]]
    assert len(sent) == len(set(sent)) == 4 * PEOPLE
    with store.session() as s:
        stored = Counter(s.exec(select(Event.id).where(Event.section_id == section.id)).all())
        assert stored == Counter(sent), "every accepted event stored exactly once, nothing else"
        cuids = s.exec(
            select(User.cuid, func.count()).where(User.section_id == section.id, col(User.cuid).is_not(None))
            .group_by(col(User.cuid))
        ).all()  # fmt: skip
        assert len(cuids) == PEOPLE and all(n == 1 for _, n in cuids), "one user per CUID"
        for a, b, email in people:
            owners = {s.get(Device, (section.id, d)).user_id for d in (a, b)}  # type: ignore[union-attr]
            assert len(owners) == 1, (email, owners)  # both devices are the person's
            (owner,) = owners
            user = s.get(User, owner)
            assert user is not None and user.cuid == hashlib.sha256(email.encode()).hexdigest()
            assert [i["productId"] for i in user.cart] == [SKU], (email, user.cart)  # the SKU, once
            merged = s.exec(select(UserAlias.alias_id).where(UserAlias.canonical_id == owner)).all()
            assert len(merged) == 1, (email, merged)  # B's anonymous user, merged into the person
            strays = s.exec(select(func.count()).select_from(Event).where(col(Event.user_id).in_(merged))).one()
            assert strays == 0, (email, strays)  # nothing left under the merged-away id
        # The cart index is the users' carts exactly: the person's entry, none for a merged-away id.
        indexed = Counter(
            (u, sku) for u, sku in s.exec(
                select(CartEntry.user_id, CartEntry.sku).where(CartEntry.section_id == section.id)
            ).all()
        )  # fmt: skip
        aliases = set(s.exec(select(UserAlias.alias_id).where(UserAlias.section_id == section.id)).all())
        carts = Counter(
            (u.id, str(i["productId"]))
            for u in s.exec(select(User).where(User.section_id == section.id)).all()
            if u.id not in aliases
            for i in u.cart
        )
        assert indexed == carts and len(indexed) == PEOPLE, (indexed - carts, carts - indexed)


async def test_a_deadlock_is_retried_and_leaves_nothing_of_the_failed_attempt(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole transaction runs again: the event stored once, one journey enrolled and started."""
    await add_integration(api, section)
    campaign = await create_campaign(api, section, cart_campaign())
    enroll = ingestion.journey_rows.enroll
    calls = Counter[str]()

    class DeadlockDetected(Exception):  # as psycopg's, SQLSTATE 40P01
        sqlstate = "40P01"

    def enroll_deadlocking_once(s: Any, journey: Journey) -> None:
        enroll(s, journey)
        calls["enroll"] += 1
        if calls["enroll"] == 1:  # after the event's INSERT and the journey's row: all must go
            raise OperationalError("UPDATE ...", {}, DeadlockDetected("deadlock detected"))

    monkeypatch.setattr(ingestion.journey_rows, "enroll", enroll_deadlocking_once)
    dyid = f"retry-{uuid.uuid4().hex[:8]}"
    r = await _send(api, section, dyid, add_to_cart(SKU))

    assert r.status_code == 202, r.text
    assert calls["enroll"] >= 2  # the failed attempt's, then the retry's
    (event_id,) = r.json()["event_ids"]
    with store.session() as s:
        assert s.exec(select(Event.id).where(Event.section_id == section.id)).all() == [event_id]
        journeys = s.exec(select(Journey).where(Journey.campaign_id == campaign)).all()
        assert len(journeys) == 1 and journeys[0].status == "active"
        event = s.get(Event, event_id)
        assert event is not None and [c["action"] for c in event.commands] == ["trigger"]
    # The retried attempt's trigger reached Temporal before the answer: the journey the store holds runs.
    client = await app_state(api).client()
    info = await client.get_workflow_handle(journeys[0].workflow_id).describe()
    assert info.status is not None and info.status.name == "RUNNING"


async def test_an_unexpected_exception_answers_500_in_the_error_shape(
    env: WorkflowEnvironment, settings: Settings, store: Store, section: SectionKeys,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr("api.routes.collect.accept", broken)
    app = create_app(settings, store=store, temporal=env.client)
    # As a server would run it: the error is answered, not raised into the client.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test") as client:
        with caplog.at_level(logging.ERROR):
            r = await _send(client, section, "boom-device", add_to_cart(SKU))

    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body == {
        "detail": [{"type": "internal_error", "loc": [], "msg": "internal error"}],
        "error": "internal error",
    }
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    logged = [rec for rec in caplog.records if rec.exc_info and rec.exc_info[0] is RuntimeError]
    assert logged, "the exception is logged with its traceback"
    assert "POST /v2/collect/user/event" in logged[0].getMessage()
