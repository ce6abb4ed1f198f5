"""The rate limiter buckets a request by its client address until its key has been verified.

Before: every presented credential had its own bucket, verified or not, so a flood sending a
made-up `rjk_<id>_<secret>` each time started each request with a full burst: all 401, never a
429, and every one a key lookup in the database."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api import auth
from api.main import create_app
from settings import Settings
from store.engine import Store
from tests.helpers import make_section, new_dyid

BURST = 10


def fake_key() -> str:
    return f"rjk_{secrets.token_hex(8)}_{secrets.token_urlsafe(24)}"


@pytest.fixture
def limited_app(env: WorkflowEnvironment, settings: Settings, store: Store) -> FastAPI:
    """A tight limit: burst 10, then one request per 2 s (no refill while the test runs)."""
    update = {"rate_limit_per_second": 0.5, "rate_limit_burst": BURST}
    return create_app(settings.model_copy(update=update), store=store, temporal=env.client)


@pytest.fixture
async def client_at(limited_app: FastAPI) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """Clients of the limited app, each from a client address of its own."""
    clients: list[httpx.AsyncClient] = []

    def make(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=limited_app, client=(address, 40000))
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://rejoin.test"))
        return clients[-1]

    yield make
    for c in clients:
        await c.aclose()


async def test_made_up_keys_share_their_client_address_bucket(client_at: Callable[[str], httpx.AsyncClient]) -> None:
    """Random keys from one address: 401 for the burst, then 429 + Retry-After, on management and
    ingestion routes alike; another address is not affected."""
    api = client_at("203.0.113.7")
    statuses: list[int] = []
    for i in range(3 * BURST):
        if i % 2:
            r = await api.get("/api/v1/section", headers={"Authorization": f"Bearer {fake_key()}"})
        else:
            body = {"user": {"dyid": new_dyid()}, "events": [{"name": "x", "properties": {"dyType": "add-to-cart-v1"}}]}
            r = await api.post("/v2/collect/user/event", json=body, headers={"dy-api-key": fake_key()})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
    assert statuses == [401] * BURST + [429] * (2 * BURST), statuses
    other = client_at("198.51.100.9")
    r = await other.get("/api/v1/section", headers={"X-Rejoin-Key": fake_key()})
    assert r.status_code == 401, r.text


async def test_a_verified_key_keeps_its_own_bucket_through_a_flood(
    client_at: Callable[[str], httpx.AsyncClient],
) -> None:
    """A key verified before the flood from its address answers on its own bucket (also once the
    auth cache forgot it); a key's own limit still holds: 429 after its burst."""
    api = client_at("203.0.113.8")
    sec = await make_section(api, "flooded")  # the admin key: a bucket of its own
    assert (await api.get("/api/v1/section", headers=sec.mgmt)).status_code == 200  # verified here (1 token)
    flood = [(await api.get("/api/v1/section", headers={"X-Rejoin-Key": fake_key()})).status_code for _ in range(12)]
    assert flood == [401] * (BURST - 1) + [429] * 3, flood
    auth._cache.clear()  # the cache entry expired: the key is looked up again, on its own bucket
    mine = [(await api.get("/api/v1/section", headers=sec.mgmt)).status_code for _ in range(BURST)]
    # The verifying request spent one of the key's tokens: BURST - 1 more, then its own 429.
    assert mine == [200] * (BURST - 1) + [429], mine
