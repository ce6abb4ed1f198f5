"""A run's call grid keeps the rate limiter's jitter margin under an integration's limit.

With `REJOIN_BROADCAST_SHARDS` a run's shards can run on different workers, and each worker's
limiter (providers/ratelimit.py, 50 ms per window for arrival jitter) sees only its own shard's
calls: the run's grid is then the only thing between the vendor and its limit, so it leaves the
same margin. A campaign's own `throttle_per_second` is the marketer's pace, kept exact.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from activities.broadcast import BroadcastActivities
from domain.caps import CapPolicy
from domain.tracking import Signer
from providers.http import outbound_session
from providers.ratelimit import JITTER_MARGIN
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRun
from store.engine import Store
from tests.audience.feed_helpers import batch_campaign, provider_push
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer
from workflows.feed_models import BatchRequest


@pytest.fixture
def box(settings: Settings) -> SecretBox:
    return SecretBox(settings.secret_keys)


@pytest.mark.parametrize(("limit", "throttle", "per_shard"), [
    (100, None, 100 / (1 + JITTER_MARGIN) / 2),
    (None, 40, 20.0),
    (100, 40, 20.0),
])  # fmt: skip
async def test_the_grid_leaves_the_vendor_limits_margin(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, box: SecretBox,
    fresh_provider: ProviderServer, limit: int | None, throttle: int | None, per_shard: float,
) -> None:  # fmt: skip
    await provider_push(api, section, fresh_provider, **({"rate_limit_per_second": limit} if limit else {}))
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    if throttle:
        spec["throttle_per_second"] = throttle
    cid = await create_campaign(api, section, spec)
    run = BroadcastRun(id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
                       reason="test", state="sending", created_at=datetime.now(UTC))  # fmt: skip
    with store.session() as s:
        s.add(run)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        acts = BroadcastActivities(
            store, ProviderRegistry(store, http, allow_private_urls=True), box, CapPolicy(5, timedelta(hours=24)),
            timedelta(hours=24), signer=Signer(settings.secret_keys), public_url="http://rejoin.test",
        )  # fmt: skip
        _, rate, _ = acts._load_batch(BatchRequest(run_id=run.id, shard=0, shards=2, as_of=datetime.now(UTC), limit=10))
    assert rate == pytest.approx(per_shard)
