"""`GET /runs/{id}` counts the run's skipped recipients by reason (`skipped_by_reason`), read from the
reasons their rows record: a trial's cap test showed "skipped 254" and nothing said why."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.testing import ActivityEnvironment

from activities.broadcast import BroadcastActivities
from domain.caps import CapPolicy
from domain.tracking import Signer
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRecipient
from store.engine import Store
from tests.audience.feed_helpers import batch_campaign, driven_run, get_run, provider_push, push_user
from tests.helpers import SectionKeys, collect, create_campaign
from tests.provider_server import ProviderServer
from workflows.feed_models import BatchRequest, BroadcastInput


async def test_skipped_recipients_are_counted_by_reason(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    """A run over two push users and one who never opted in: 2 sent, 1 skipped `no_identifier`;
    reasons with a detail ("outranked: ...") count under their code."""
    await provider_push(api, section, fresh_provider)
    for _ in range(2):
        await push_user(api, section, store)
    await collect(api, section, str(secrets.randbelow(10**18)), {"name": "Hello", "properties": {"dyType": "x-v1"}})
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    run = driven_run(store, section.id, cid)
    box = SecretBox(settings.secret_keys)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        acts = BroadcastActivities(
            store, ProviderRegistry(store, http, allow_private_urls=True), box, CapPolicy(5, timedelta(hours=24)),
            timedelta(hours=24), signer=Signer(settings.secret_keys), public_url="http://rejoin.test", concurrency=4,
        )  # fmt: skip
        inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1)
        assert await asyncio.to_thread(ActivityEnvironment().run, acts.plan_audience, inp) == 3
        req = BatchRequest(run_id=run.id, shard=0, shards=1, as_of=datetime.now(UTC), limit=200)
        await ActivityEnvironment().run(acts.deliver_batch, req)

    shown = await get_run(api, section, run.id)
    assert (shown["sent"], shown["skipped"]) == (2, 1), shown
    assert shown["skipped_by_reason"] == {"no_identifier": 1}, shown

    with store.session() as s:  # as a cap and a priority refusal record theirs: code, then detail
        for i, reason in enumerate(["outranked: campaign cmp_a (priority 90)", "outranked: campaign cmp_b",
                                    "global_cap", "holdout", None]):  # fmt: skip
            s.add(BroadcastRecipient(run_id=run.id, user_id=f"u{i}", status="skipped", reason=reason))
        s.add(BroadcastRecipient(run_id=run.id, user_id="u9", status="failed", reason="rejected (400)"))
    shown = await get_run(api, section, run.id)
    assert shown["skipped_by_reason"] == {
        "outranked": 2, "global_cap": 1, "holdout": 1, "no_identifier": 1, "unknown": 1,
    }, shown  # fmt: skip
