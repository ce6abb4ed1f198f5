"""Which adapter serves an integration kind."""

from __future__ import annotations

import httpx

from providers.base import ConfigurationError, Provider
from providers.custom_http import CustomHttpProvider
from providers.outbox import OutboxProvider
from store.engine import Store

INTEGRATION_KINDS = ("outbox", "custom_http")


class ProviderRegistry:
    def __init__(self, store: Store, http: httpx.AsyncClient, *, allow_private_urls: bool) -> None:
        self._by_kind: dict[str, Provider] = {
            "outbox": OutboxProvider(store),
            "custom_http": CustomHttpProvider(http, allow_private_urls=allow_private_urls),
        }

    def for_kind(self, kind: str) -> Provider:
        provider = self._by_kind.get(kind)
        if provider is None:
            raise ConfigurationError(f"no provider adapter for integration kind '{kind}'")
        return provider
