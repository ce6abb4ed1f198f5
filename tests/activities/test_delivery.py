"""Delivery through the custom HTTP integration to a real local provider server."""

from __future__ import annotations

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Send
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    outbox,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply


async def _custom(api: httpx.AsyncClient, sec: SectionKeys, provider: ProviderServer, channel: str = "email") -> None:
    await add_integration(api, sec, channel, "custom_http",
                          config={"url": provider.url(f"/{sec.id}/{channel}"), "headers": {"X-Shop": "acme"}})  # fmt: skip


async def test_custom_http_posts_rendered_payload_with_idempotency_key(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """The template is rendered for the recipient and POSTed with headers and an Idempotency-Key."""
    await _custom(api, section, fresh_provider)
    payload = {"to": "${User identifier}", "subject": "Your ${Items in cart|name|item1} is waiting", "c": "${dyCampaignName}"}
    cid = await create_campaign(api, section, cart_campaign("Cart \"quoted\"", steps=[step("Nudge", payload=payload)]))
    await api.put("/api/v1/products", json=[{"sku": "sku-1", "name": 'Red "Dress"\nnew'}], headers=section.mgmt)
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    [req] = fresh_provider.to(f"/{section.id}/email")
    assert req.method == "POST" and req.headers["x-shop"] == "acme"
    assert req.headers["idempotency-key"].endswith(":0:email")
    assert req.json() == {"to": f"user{dyid}@example.com", "subject": 'Your Red "Dress"\nnew is waiting', "c": 'Cart "quoted"'}


async def test_5xx_and_429_are_retried_and_sent_once(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer, store: Store
) -> None:
    """A 503 then a 429 with Retry-After are retried; one delivery is recorded, with its attempts."""
    await _custom(api, section, fresh_provider)
    path = f"/{section.id}/email"
    fresh_provider.script(path, Reply(503, "busy"), Reply(429, "slow down", headers={"Retry-After": "1"}))
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 1 and len(fresh_provider.to(path)) == 3
    assert len([d for d in fresh_provider.deliveries if d.path == path]) == 1
    with store.session() as s:
        send = s.exec(select(Send).where(Send.journey_id == result.journey_id)).one()
    assert (send.status, send.attempts, send.possible_duplicate) == ("accepted", 3, False)


async def test_permanent_failure_falls_back_to_next_channel(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer, store: Store
) -> None:
    """A 400 from the email provider is not retried; the step goes out on SMS instead."""
    await _custom(api, section, fresh_provider, "email")
    await add_integration(api, section, "sms")
    fresh_provider.default(f"/{section.id}/email", Reply(400, {"error": "bad template"}))
    spec = cart_campaign(channel_priority=["email", "sms"], steps=[step("Nudge", channels=("email", "sms"))])
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section, phone="+15550000009")
    await collect(api, section, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, section, cid, uid)
    assert [(d.outcome, d.channel) for d in result.decisions] == [("failed", "email"), ("sent", "sms")]
    assert len(fresh_provider.to(f"/{section.id}/email")) == 1
    assert [m["recipient"] for m in await outbox(api, section, channel="sms")] == ["+15550000009"]
    with store.session() as s:
        failed = s.exec(select(Send).where(Send.journey_id == result.journey_id, Send.channel == "email")).one()
    assert failed.status == "failed" and failed.provider_status == 400 and "bad template" in (failed.provider_response or "")
