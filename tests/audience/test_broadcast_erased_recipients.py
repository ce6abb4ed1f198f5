"""An erased person is no recipient of later batched runs.

An erasure (store/erasure.py) keeps the person's `User` rows as tombstones, and it deletes the
aliases of the ids merged into them, so those ids stood alone too. Before, every later run listed
the tombstones as recipients: each was enrolled (a journey row: the campaign report counted a
recipient who no longer exists) and then skipped `no_identifier`, and the run's total and skipped
counted them. Now an erasure marks its tombstones (`User.erased_at`): a run lists no one marked, and
a run listed before the erasure skips them ("erased") before any enrollment, on the chunked path
and the one-at-a-time path alike. Real API, store, Temporal and local provider server."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRecipient
from store.engine import Store
from store.erasure import ERASED
from store.identity_tables import UserAlias
from store.migrations import mark_erased_users
from store.tables import Device, Journey, User
from tests.audience.feed_helpers import (
    batch_campaign,
    campaign_sends,
    driven_run,
    get_run,
    planned_batch,
    provider_push,
    push_opt_in,
    run_result,
)
from tests.audience.test_broadcast_exactly_once import _activities
from tests.helpers import SectionKeys, collect, create_campaign, login, new_dyid
from tests.provider_server import ProviderServer, Reply

FAR = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _shopper(api: httpx.AsyncClient, sec: SectionKeys, *, second_device: bool = False) -> tuple[str, list[str]]:
    """A logged-in shopper opted in to app push: (dyid, their user ids). With `second_device`, also an
    anonymous device of theirs that opted in and then logged in: merged into the person (an alias)."""
    dyid, email = new_dyid(), f"p{secrets.token_hex(4)}@example.com"
    await collect(api, sec, dyid, push_opt_in(), login(email))
    ids = [await _user_id(api, sec, dyid)]
    if second_device:
        device = new_dyid()
        await collect(api, sec, device, push_opt_in())
        ids.append(await _user_id(api, sec, device))
        await collect(api, sec, device, login(email))
        assert await _user_id(api, sec, device) == ids[0]  # merged: the device's id is an alias now
    return dyid, ids


async def _user_id(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> str:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _erase(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> None:
    r = await api.delete(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text


async def _report(api: httpx.AsyncClient, sec: SectionKeys, cid: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=sec.mgmt, params={"to": FAR.isoformat()})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _recipients(store: Store, run_id: str) -> dict[str, BroadcastRecipient]:
    with store.session() as s:
        rows = s.exec(select(BroadcastRecipient).where(col(BroadcastRecipient.run_id) == run_id)).all()
    return {r.user_id: r for r in rows}


def _journey_users(store: Store, cid: str) -> set[str]:
    with store.session() as s:
        return set(s.exec(select(Journey.user_id).where(col(Journey.campaign_id) == cid)).all())


def _scheduled(**extra: Any) -> dict[str, Any]:
    return batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()},
                          **extra)  # fmt: skip


async def test_a_run_after_an_erasure_neither_lists_nor_counts_the_erased_person(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    path = await provider_push(api, section, fresh_provider)
    fresh_provider.handler(path, lambda _req: Reply(200, {"ok": True}))
    kept = [await _shopper(api, section) for _ in range(2)]
    erased_dyid, erased_ids = await _shopper(api, section, second_device=True)
    await _erase(api, section, erased_dyid)
    with store.session() as s:  # both tombstones marked in the erasure's transaction; the alias is gone
        marked = s.exec(select(User.id).where(col(User.id).in_(erased_ids), col(User.erased_at).isnot(None))).all()
        assert sorted(marked) == sorted(erased_ids)
        assert s.exec(select(UserAlias).where(col(UserAlias.alias_id).in_(erased_ids))).all() == []

    cid = await create_campaign(api, section, _scheduled())
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    assert r.status_code == 202, r.text
    run_id = str(r.json()["id"])
    progress = await run_result(env.client, run_id)

    live = {ids[0] for _, ids in kept}
    assert (progress.sent, progress.skipped, progress.failed) == (2, 0, 0), progress
    run = await get_run(api, section, run_id)
    assert (run["total"], run["sent"], run["skipped"], run["pending"]) == (2, 2, 0, 0), run
    assert set(_recipients(store, run_id)) == live  # the tombstones are not listed
    assert {s.user_id for s in await campaign_sends(store, cid)} == live
    assert len(fresh_provider.to(path)) == 2
    assert _journey_users(store, cid) == live  # no cohort for the erased person
    body = await _report(api, section, cid)
    assert body["totals"]["users_triggered"] == 2, body["totals"]
    assert [v["users"] for v in body["variations"]] == [2], body["variations"]


@pytest.mark.parametrize("path_taken", ["chunked", "one_at_a_time"])
async def test_a_run_listed_before_an_erasure_skips_the_person_without_a_cohort(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer,
    path_taken: str,
) -> None:  # fmt: skip
    """The run lists the person, then they are erased, then the batch delivers: they are skipped
    ("erased") before enrollment on either path (a throttled shard prepares one recipient at a time)."""
    path = await provider_push(api, section, fresh_provider)
    fresh_provider.handler(path, lambda _req: Reply(200, {"ok": True}))
    kept = [await _shopper(api, section) for _ in range(3)]
    erased_dyid, erased_ids = await _shopper(api, section, second_device=True)
    throttle = {"throttle_per_second": 200} if path_taken == "one_at_a_time" else {}
    cid = await create_campaign(api, section, _scheduled(**throttle))
    run = driven_run(store, section.id, cid)
    async with outbound_session(limit=20, timeout=10, connect=5) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        acts = _activities(store, registry, SecretBox(settings.secret_keys), settings)
        req = await planned_batch(acts, run, 4)  # the person is listed (their merged device is not)
        await _erase(api, section, erased_dyid)
        result = await ActivityEnvironment().run(acts.deliver_batch, req)

    live = {ids[0] for _, ids in kept}
    assert (result.sent, result.skipped, result.failed) == (3, 1, 0), result
    assert (result.run_sent, result.run_skipped, result.run_failed) == (3, 1, 0), result
    rows = _recipients(store, run.id)
    assert (rows[erased_ids[0]].status, rows[erased_ids[0]].reason) == ("skipped", ERASED)
    assert {s.user_id for s in await campaign_sends(store, cid)} == live
    assert len(fresh_provider.to(path)) == 3
    assert _journey_users(store, cid) == live  # not enrolled: no cohort, no journey row
    body = await _report(api, section, cid)
    assert body["totals"]["users_triggered"] == 3, body["totals"]


def test_the_migration_marks_tombstones_made_before_the_marker(store: Store, section: SectionKeys) -> None:
    """A database erased before `User.erased_at` existed: its tombstones (no CUID, attributes, cart,
    locale, device or identifier, and no alias of anyone) are marked by the start-up migration
    (`store/migrations.py`); a live user, an anonymous device's user and a merged id are not."""
    now = datetime.now(UTC) - timedelta(days=3)

    def user(**extra: Any) -> User:
        fields: dict[str, Any] = {"attributes": {}, "cart": [], **extra}
        return User(id="usr_" + secrets.token_hex(10), section_id=section.id, created_at=now, updated_at=now, **fields)

    tombstone, known, anonymous, merged, with_attributes = (
        user(), user(cuid="c-" + secrets.token_hex(4)), user(), user(), user(attributes={"tier": "gold"})
    )  # fmt: skip
    with store.session() as s:
        for u in (tombstone, known, anonymous, merged, with_attributes):
            s.add(u)
        s.flush()
        s.add(Device(section_id=section.id, device_key=new_dyid(), user_id=anonymous.id))
        s.add(UserAlias(alias_id=merged.id, section_id=section.id, canonical_id=known.id, merged_at=now))
    with store.session() as s:
        assert mark_erased_users(s, section_id=section.id) == 1
        assert mark_erased_users(s, section_id=section.id) == 0  # idempotent
    with store.session() as s:
        rows = s.exec(select(User).where(User.section_id == section.id)).all()
        assert {u.id: u.erased_at for u in rows if u.erased_at is not None} == {tombstone.id: now}
