"""Adapters driven directly (no workflow) against the local provider server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from providers.registry import ProviderRegistry
from store.engine import Store


@pytest.fixture
async def registry(store: Store) -> AsyncIterator[ProviderRegistry]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as http:
        yield ProviderRegistry(store, http, allow_private_urls=True)
