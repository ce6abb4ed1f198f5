"""A person who logs in during a batched run is sent the run's message once.

The run lists every user of the section: a shopper's anonymous device and their logged-in user
are two recipients. A trial logged 40 such devices in during a run: both rows resolved to the
person, the second took the first's send (still in flight) for a retry of its own and called
the vendor again under the same key (35 of 40 people got the message twice, flagged possible
duplicates), and the run counted 80 sent. The row merged away is now skipped when the person
is a recipient of the run. The other way round too: a device sent the message while anonymous,
then logged in, and the person's own row came after the merge: it sent the message again, to the
same device under another key (37 of 200 people). That row is now skipped, on the throttled path
(one recipient at a time) and the chunked one. Real API, store and local provider server; the activities are driven
directly."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import col, select, update
from temporalio.testing import ActivityEnvironment

from activities.broadcast import MERGED_ALREADY_SENT, MERGED_DURING_RUN
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRecipient
from store.engine import Store
from tests.audience.feed_helpers import batch_campaign, driven_run, planned_batch, provider_push, push_opt_in
from tests.audience.test_broadcast_exactly_once import _activities
from tests.helpers import SectionKeys, collect, create_campaign, login
from tests.provider_server import ProviderServer, Reply

PEOPLE = 6


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def test_a_device_logging_in_during_a_run_is_not_sent_the_message_again(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    path = await provider_push(api, section, fresh_provider)
    fresh_provider.handler(path, lambda _req: Reply(200, {"ok": True}, delay=0.2))  # calls overlap
    shoppers = []
    for _ in range(PEOPLE):
        email, person, device = f"p{secrets.token_hex(4)}@example.com", secrets.token_hex(6), secrets.token_hex(6)
        await collect(api, section, person, push_opt_in(), login(email))  # logged in: the CUID's owner
        await collect(api, section, device, push_opt_in())  # the same shopper's other device, anonymous
        shoppers.append((email, device))
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": "2026-01-01T00:00:00Z"})
    cid = await create_campaign(api, section, spec)
    run = driven_run(store, section.id, cid)
    async with outbound_session(limit=50, timeout=10, connect=5) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        acts = _activities(store, registry, SecretBox(settings.secret_keys), settings)
        req = await planned_batch(acts, run, 2 * PEOPLE)  # both of each shopper's users are listed
        for email, device in shoppers:  # then they log in on the other device: it merges into the person
            await collect(api, section, device, login(email))
        result = await ActivityEnvironment().run(acts.deliver_batch, req)
    keys = [r.headers["idempotency-key"] for r in fresh_provider.to(path)]
    assert len(keys) == PEOPLE and len(set(keys)) == PEOPLE, keys  # one call per person
    assert (result.sent, result.skipped) == (PEOPLE, PEOPLE), result
    with store.session() as s:
        rows = s.exec(select(BroadcastRecipient).where(col(BroadcastRecipient.run_id) == run.id)).all()
    assert sorted(r.reason or "" for r in rows if r.status == "skipped") == [MERGED_DURING_RUN] * PEOPLE


async def _user_id(api: httpx.AsyncClient, section: SectionKeys, dyid: str) -> str:
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _hold(store: Store, run_id: str, user_ids: list[str], until: datetime | None) -> None:
    """Hold these recipients back (not due before `until`), or release them (None)."""
    with store.session() as s:
        rows = col(BroadcastRecipient.run_id) == run_id, col(BroadcastRecipient.user_id).in_(user_ids)
        s.execute(update(BroadcastRecipient).where(*rows).values(not_before=until))


@pytest.mark.parametrize("throttle", [50, None], ids=["throttled", "chunked"])
async def test_a_device_sent_before_logging_in_is_not_sent_the_message_again_as_the_person(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer,
    throttle: int | None,
) -> None:  # fmt: skip
    """Each anonymous device's row is sent first; then the device logs in (merged into the person);
    then the person's own row comes. Before: it was sent again (a second call per person, to the
    same device's token under the person's key), counted sent. Now it is skipped."""
    path = await provider_push(api, section, fresh_provider)
    fresh_provider.handler(path, lambda _req: Reply(200, {"ok": True}))
    shoppers, people = [], []
    for _ in range(PEOPLE):
        email, person, device = f"p{secrets.token_hex(4)}@example.com", secrets.token_hex(6), secrets.token_hex(6)
        await collect(api, section, person, push_opt_in(), login(email))
        await collect(api, section, device, push_opt_in())
        shoppers.append((email, device))
        people.append(await _user_id(api, section, person))
    extra = {"throttle_per_second": throttle} if throttle else {}
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": "2026-01-01T00:00:00Z"}, **extra)
    cid = await create_campaign(api, section, spec)
    run = driven_run(store, section.id, cid)
    async with outbound_session(limit=50, timeout=10, connect=5) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        acts = _activities(store, registry, SecretBox(settings.secret_keys), settings)
        req = await planned_batch(acts, run, 2 * PEOPLE)
        _hold(store, run.id, people, datetime.now(UTC) + timedelta(days=1))  # the devices' rows go first
        first = await ActivityEnvironment().run(acts.deliver_batch, req)
        assert (first.sent, len(fresh_provider.to(path))) == (PEOPLE, PEOPLE), first
        for email, device in shoppers:  # then they log in on the device: it merges into the person
            await collect(api, section, device, login(email))
        _hold(store, run.id, people, None)  # then the people's own rows come
        second = await ActivityEnvironment().run(acts.deliver_batch, req)
    keys = [r.headers["idempotency-key"] for r in fresh_provider.to(path)]
    assert len(keys) == PEOPLE and len(set(keys)) == PEOPLE, keys  # one call per person
    assert (second.sent, second.skipped) == (0, PEOPLE), second
    assert (second.run_sent, second.run_skipped) == (PEOPLE, PEOPLE), second
    with store.session() as s:
        rows = s.exec(select(BroadcastRecipient).where(col(BroadcastRecipient.run_id) == run.id)).all()
    assert sorted(r.user_id for r in rows if r.status == "skipped") == sorted(people)
    assert {r.reason for r in rows if r.status == "skipped"} == {MERGED_ALREADY_SENT}
