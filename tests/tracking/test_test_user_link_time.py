"""A test user's journey skips its waits, so its clock runs days ahead of real time; their sends
and tracking links are still issued at the real time of the first attempt (links live
REJOIN_LINK_TTL from then), and a retried delivery sends the very same links."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import timedelta
from typing import Any

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from domain.tracking import Signer
from settings import Settings
from store.engine import Store
from store.tables import Send, now_utc
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from tests.tracking.test_tracking_api import HUMAN, path, products

TTL = timedelta(seconds=6)
TARGET = "https://shop.example/p/tl1"


async def test_a_test_users_links_expire_from_real_time_and_retries_send_the_same_links(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, settings: Settings, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    esp = "/esp/" + secrets.token_hex(4)
    fresh_provider.script(esp, Reply(503))  # the first step's first attempt is retried
    fresh_provider.default(esp, Reply(200, {"id": "ok"}))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(esp)})
    await products(api, section, {"sku": "tl1", "name": "Shoe", "url": TARGET})
    payload = {"to": "${User identifier}", "link": "${Items in cart|url|item1}"}
    spec = cart_campaign(wait="PT1H", steps=[step("One", payload=payload), step("Two", "P3D", payload=payload)])
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section)
    flagged = await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=section.mgmt)
    assert flagged.status_code == 200, flagged.text
    await collect(api, section, dyid, add_to_cart("tl1"))
    result = await journey_result(env.client, section, cid, uid)
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["sent", "sent"], result

    calls = [r.json() for r in fresh_provider.to(esp)]
    assert len(calls) == 3 and calls[0] == calls[1], calls  # the retry sent the very same links
    signer = Signer(settings.secret_keys)
    links = [path(c["link"]) for c in calls[1:]]
    issued = []
    for link in links:
        data: dict[str, Any] | None = signer.verify("c", link.rsplit("/", 1)[1])
        assert data is not None and data["t"] == TARGET, data
        issued.append(int(data["i"]))
        # The journey's clock is 1 hour, then 3 days ahead: the links carry the real time.
        assert abs(data["i"] - time.time()) < 120, (data["i"], time.time())
    with store.session() as s:
        sends = s.exec(select(Send).where(Send.campaign_id == cid)).all()
        assert len(sends) == 2 and all(x.created_at <= now_utc() for x in sends), [x.created_at for x in sends]

    short_lived = create_app(settings.model_copy(update={"link_ttl": TTL}), store=store, temporal=env.client)
    transport = httpx.ASGITransport(app=short_lived)
    async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test") as client:
        for link in links:
            r = await client.get(link, headers=HUMAN)
            assert r.status_code == 302 and r.headers["location"] == TARGET, r.text
        await asyncio.sleep(max(issued) + TTL.total_seconds() + 1.5 - time.time())
        for link in links:  # REJOIN_LINK_TTL after they were really sent: dead
            r = await client.get(link, headers=HUMAN)
            assert r.status_code == 200 and "location" not in r.headers, r.headers
