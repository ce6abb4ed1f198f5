"""`GET /runs/{id}` tells a run's waiting recipients and its failed sends apart (api/routes/feeds.py).

- A recipient waiting for its send window and one waiting its own retry backoff (a provider's 5xx)
  both have `not_before`: before, both counted `waiting_for_window`, also in a run with no window.
  Now `waiting_for_window` and `waiting_to_retry`.
- A campaign paused while recipients wait their retry: they end `skipped`, the sends they began
  `failed` ("not retried: campaign_paused"), one of them possibly delivered (its answer was lost).
  Before, the run showed only `skipped`; now also `failed_sends` and `possibly_delivered`, as the
  campaign report counts them.

Real store and API; the run's batches are driven as activities (tests/audience/test_broadcast_exactly_once.py).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.broadcast import BroadcastActivities
from domain.caps import CapPolicy
from domain.tracking import Signer
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRun
from store.engine import Store
from store.tables import Campaign
from tests.audience.feed_helpers import (
    batch_campaign,
    campaign_sends,
    driven_run,
    get_run,
    provider_push,
    push_user,
    zone_at_local_hour,
)
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Received, Reply
from workflows.feed_models import BatchRequest, BroadcastInput

TOKEN = re.compile(rb"tok-[0-9a-f]{12}")
REFUSED = Reply(503, {"error": "try later"})  # a definite answer: retried, no possible duplicate
LOST = Reply(202, {"id": "e1"}, truncate=True)  # processed, then the connection reset mid-answer


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _run(api: httpx.AsyncClient, sec: SectionKeys, store: Store, **extra: Any) -> tuple[str, BroadcastRun]:
    """A scheduled app push campaign's run (not started: the test drives its batches): (campaign, run)."""
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, sec, {**spec, **extra})
    return cid, driven_run(store, sec.id, cid)


async def _deliver(store: Store, settings: Settings, run: BroadcastRun, as_of: datetime, plan: bool = False) -> None:
    """One batch of the run's only shard at `as_of` (after planning its audience if `plan`)."""
    box = SecretBox(settings.secret_keys)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        acts = BroadcastActivities(
            store, ProviderRegistry(store, http, allow_private_urls=True), box, CapPolicy(5, timedelta(hours=24)),
            timedelta(hours=24), signer=Signer(settings.secret_keys), public_url="http://rejoin.test", concurrency=8,
        )  # fmt: skip
        if plan:
            inp = BroadcastInput(run_id=run.id, section_id=run.section_id, campaign_id=run.campaign_id, shards=1)
            await asyncio.to_thread(ActivityEnvironment().run, acts.plan_audience, inp)
        req = BatchRequest(run_id=run.id, shard=0, shards=1, as_of=as_of, limit=200)
        await ActivityEnvironment().run(acts.deliver_batch, req)


def _first_lost_then_refused() -> Callable[[Received], Reply]:
    """The first recipient called: its answer is lost (possibly delivered); every other call is refused."""
    first: list[bytes] = []

    def answer(req: Received) -> Reply:
        found = TOKEN.search(req.body)
        assert found is not None, req.body
        if not first:
            first.append(found.group())
        return LOST if found.group() == first[0] else REFUSED

    return answer


def _counts(run: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: run[n] for n in names}


async def test_a_retry_is_not_counted_waiting_for_the_window(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    """A daytime recipient refused (503) waits its retry; a night-time one waits for 09:00 their time."""
    path = await provider_push(api, section, fresh_provider)
    await push_user(api, section, store, zone_at_local_hour(range(11, 18)))
    await push_user(api, section, store, zone_at_local_hour(range(0, 6)))
    fresh_provider.handler(path, lambda _: REFUSED)
    window = {"start": "09:00", "end": "21:00", "outside": "wait"}
    _, run = await _run(api, section, store, send_window=window)
    await _deliver(store, settings, run, datetime.now(UTC), plan=True)
    assert len(fresh_provider.to(path)) == 1  # the daytime recipient only
    got = await get_run(api, section, run.id)
    names = ("pending", "waiting_for_window", "waiting_to_retry", "sent", "skipped", "failed", "failed_sends")
    assert _counts(got, *names) == dict(zip(names, (2, 1, 1, 0, 0, 0, 0), strict=True)), got


async def test_a_run_without_a_window_has_nobody_waiting_for_it(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    path = await provider_push(api, section, fresh_provider)
    for _ in range(3):
        await push_user(api, section, store)
    fresh_provider.handler(path, lambda _: REFUSED)
    _, run = await _run(api, section, store)
    await _deliver(store, settings, run, datetime.now(UTC), plan=True)
    got = await get_run(api, section, run.id)
    names = ("pending", "waiting_for_window", "waiting_to_retry")
    assert _counts(got, *names) == {"pending": 3, "waiting_for_window": 0, "waiting_to_retry": 3}, got


async def test_a_run_paused_mid_retry_shows_its_failed_and_possibly_delivered_sends(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    path = await provider_push(api, section, fresh_provider)
    for _ in range(3):
        await push_user(api, section, store)
    fresh_provider.handler(path, _first_lost_then_refused())
    cid, run = await _run(api, section, store)
    await _deliver(store, settings, run, datetime.now(UTC), plan=True)
    got = await get_run(api, section, run.id)
    assert _counts(got, "waiting_to_retry", "failed_sends", "possibly_delivered") == {
        "waiting_to_retry": 3, "failed_sends": 0, "possibly_delivered": 0,
    }, got  # fmt: skip
    with store.session() as s:  # as POST /pause does to the row, while the run's recipients wait
        campaign = s.get(Campaign, cid)
        assert campaign is not None
        campaign.status = "paused"
        s.add(campaign)
    await _deliver(store, settings, run, datetime.now(UTC) + timedelta(hours=1))  # every retry due
    assert len(fresh_provider.to(path)) == 3  # no call after the pause
    got = await get_run(api, section, run.id)
    names = ("sent", "skipped", "failed", "pending", "waiting_to_retry", "failed_sends", "possibly_delivered")
    assert _counts(got, *names) == dict(zip(names, (0, 3, 0, 0, 0, 3, 1), strict=True)), got
    sends = await campaign_sends(store, cid)  # what the run's counts are read from
    assert sorted((s.status, s.possible_duplicate) for s in sends) == [
        ("failed", False), ("failed", False), ("failed", True),
    ], sends  # fmt: skip
    assert all("not retried: campaign_paused" in (s.provider_response or "") for s in sends), sends


async def test_a_runs_counts_leave_out_another_runs_sends(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    """Two runs of one campaign over the same person: each counts only its own sends."""
    path = await provider_push(api, section, fresh_provider)
    await push_user(api, section, store)
    fresh_provider.handler(path, lambda _: LOST)
    cid, first = await _run(api, section, store)
    await _deliver(store, settings, first, datetime.now(UTC), plan=True)
    second = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
        reason="test", state="sending", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(second)
        campaign = s.get(Campaign, cid)
        assert campaign is not None
        campaign.status = "paused"
        s.add(campaign)
    await _deliver(store, settings, first, datetime.now(UTC) + timedelta(hours=1))
    await _deliver(store, settings, second, datetime.now(UTC), plan=True)
    one, two = await get_run(api, section, first.id), await get_run(api, section, second.id)
    assert (one["failed_sends"], one["possibly_delivered"], one["skipped"]) == (1, 1, 1), one
    assert (two["failed_sends"], two["possibly_delivered"], two["skipped"]) == (0, 0, 1), two
