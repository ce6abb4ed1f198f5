"""What the Temporal outage tests share: an API that connects to Temporal itself, at an address a
test chooses (nothing listening, a silent or faulty server), and a feed whose sync needs Temporal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from api.main import create_app
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys


@asynccontextmanager
async def api_connecting_to(settings: Settings, store: Store, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API as in production: no client handed in, `AppState.client` connects to `address` itself."""
    app = create_app(settings.model_copy(update={"temporal_address": address}), store=store)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://outage.test", timeout=120) as client:
        yield client


async def url_feed(api: httpx.AsyncClient, section: SectionKeys) -> str:
    """A URL feed (its sync starts a workflow: a route that needs Temporal); its id."""
    body = {"kind": "product", "name": "F", "source": "url", "url": "http://127.0.0.1:9/f.csv"}
    r = await api.post("/api/v1/feeds", json=body, headers=section.mgmt)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])
