"""Adapters driven directly (no workflow) against the local provider server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from providers.registry import ProviderRegistry
from store.engine import Store
from tests.providers.clients import CLIENT_KINDS, outbound


@pytest.fixture
async def registry(store: Store) -> AsyncIterator[ProviderRegistry]:
    """Adapters on the worker's client (aiohttp)."""
    async with outbound("aiohttp") as http:
        yield ProviderRegistry(store, http, allow_private_urls=True)


@pytest.fixture(params=CLIENT_KINDS)
def client_kind(request: pytest.FixtureRequest) -> str:
    """Run a guarded-HTTP rule on each outbound client HttpCaller accepts."""
    return str(request.param)
