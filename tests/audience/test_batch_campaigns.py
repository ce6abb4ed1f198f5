"""Feed- and schedule-driven campaigns: price drop, attribute changes, scheduled push fan-out,
quiet hours. Feed syncs and runs go through the real API, Temporal (virtual time) and store."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from store.broadcast_tables import BroadcastRun
from store.engine import Store
from store.tables import User
from tests.audience.feed_helpers import (
    batch_campaign,
    campaign_sends,
    create_feed,
    csv_bytes,
    get_run,
    provider_push,
    push_user,
    run_result,
    upload_feed,
    zone_at_local_hour,
)
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    collect,
    create_campaign,
    outbox,
    reachable_user,
)
from tests.provider_server import ProviderServer, Reply
from worker import build_worker
from workflows.broadcast import BroadcastWorkflow
from workflows.feed_models import BroadcastInput
from workflows.ids import broadcast_workflow_id


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _product_sync(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, feed: str, *rows: str
) -> Any:
    return await upload_feed(api, env.client, sec, feed, csv_bytes("sku,name,price,in_stock", *rows))


async def test_price_drop_triggers_cart_holders_at_campaign_schedule(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A price drop of at least 10% between syncs messages users with the item in cart, at the scheduled time."""
    await add_integration(api, section)
    schedule = {
        "time_of_day": "10:00",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "timezone": "Europe/Paris",
    }
    cid = await create_campaign(
        api, section, batch_campaign("price_drop", price_drop={"min_percent": 10}, schedule=schedule)
    )
    feed = await create_feed(api, section)
    await _product_sync(api, env, section, feed, "sku-1,Shoe,100,true", "sku-2,Hat,100,true")
    d1, u1 = await reachable_user(api, section)
    d2, u2 = await reachable_user(api, section)
    await reachable_user(api, section)
    await collect(api, section, d1, add_to_cart("sku-1", 100, cart=[("sku-1", 100), ("sku-2", 100)]))
    await collect(api, section, d2, add_to_cart("sku-2", 100))
    summary = await _product_sync(api, env, section, feed, "sku-1,Shoe,80,true", "sku-2,Hat,95,true")
    assert len(summary.runs) == 1, summary
    progress = await run_result(env.client, summary.runs[0])
    assert (progress.sent, progress.skipped) == (1, 0), progress
    messages = await outbox(api, section)
    assert len(messages) == 1
    items = messages[0]["payload"]["items"]
    assert [(i["sku"], i["old_price"], i["price"]) for i in items] == [("sku-1", 100.0, 80.0)]
    (send,) = await campaign_sends(store, cid)
    assert send.user_id == u1
    local = send.created_at.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (10, 0), local
    run = await get_run(api, section, summary.runs[0])
    assert (run["state"], run["total"], run["sent"], run["pending"]) == ("done", 1, 1, 0)
    assert u2 not in {s.user_id for s in await campaign_sends(store, cid)}


async def test_back_in_stock_triggers_users_who_viewed_or_carted(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Change in Product Attribute (in_stock false -> true) messages users who viewed or carted that product."""
    await add_integration(api, section)
    rule = {
        "attribute": "in_stock",
        "old": [{"op": "eq", "value": False}],
        "new": [{"op": "eq", "value": True}],
    }
    cid = await create_campaign(
        api, section, batch_campaign("product_attribute_change", attribute_change=rule)
    )
    feed = await create_feed(api, section)
    await _product_sync(api, env, section, feed, "sku-9,Lamp,40,false", "sku-8,Desk,90,true")
    viewer, carter, other = [await reachable_user(api, section) for _ in range(3)]
    r = await api.post(
        "/v2/collect/user/pageview",
        json={"user": {"dyid": viewer[0], "active_consent_accepted": True},
              "context": {"page": {"type": "PRODUCT", "data": ["sku-9"], "location": "https://shop.test/9"}}},
        headers=section.ing,
    )  # fmt: skip
    assert r.status_code == 202, r.text
    await collect(api, section, carter[0], add_to_cart("sku-9", 40))
    await collect(api, section, other[0], add_to_cart("sku-8", 90))
    summary = await _product_sync(api, env, section, feed, "sku-9,Lamp,40,true", "sku-8,Desk,90,false")
    (run_id,) = summary.runs
    progress = await run_result(env.client, run_id)
    assert progress.sent == 2, progress
    assert {s.user_id for s in await campaign_sends(store, cid)} == {viewer[1], carter[1]}
    item = (await outbox(api, section))[0]["payload"]["items"][0]
    assert (item["sku"], item["old_value"], item["new_value"]) == ("sku-9", False, True)


async def test_user_attribute_change_matches_old_and_new_values(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """Change in User Attribute (loyalty Bronze -> Silver) triggers only users whose values match both sides."""
    await add_integration(api, section)
    rule = {
        "attribute": "loyalty",
        "old": [{"op": "eq", "value": "Bronze"}],
        "new": [{"op": "eq", "value": "silver"}],
    }
    spec = batch_campaign("user_attribute_change", attribute_change=rule)
    spec["variations"][0]["steps"][0]["messages"]["email"]["payload"] = {
        "text": "Now ${User data|CRM|loyalty}!",
        "change": "${Trigger items}",
    }
    cid = await create_campaign(api, section, spec)
    people = [await reachable_user(api, section) for _ in range(3)]
    cuids = []
    with store.session() as s:
        for _, uid in people:
            user = s.get(User, uid)
            assert user is not None and user.cuid
            cuids.append(user.cuid)
    feed = await create_feed(api, section, kind="user")
    first = csv_bytes("cuid,loyalty", *(f"{c},Bronze" for c in cuids))
    await upload_feed(api, env.client, section, feed, first)
    second = csv_bytes("cuid,loyalty", f"{cuids[0]},Silver", f"{cuids[1]},Gold", f"{cuids[2]},Bronze")
    summary = await upload_feed(api, env.client, section, feed, second)
    assert summary.changes == 2
    (run_id,) = summary.runs
    assert (await run_result(env.client, run_id)).sent == 1
    assert [s.user_id for s in await campaign_sends(store, cid)] == [people[0][1]]
    payload = (await outbox(api, section))[0]["payload"]
    assert payload["text"] == "Now Silver!"
    assert payload["change"] == [{"attribute": "loyalty", "old_value": "Bronze", "new_value": "Silver"}]


async def _start_run(api: httpx.AsyncClient, sec: SectionKeys, cid: str) -> str:
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=sec.mgmt)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def _scheduled_push_campaign(api: httpx.AsyncClient, sec: SectionKeys, send_at: datetime | None = None,
                                   **extra: Any) -> str:  # fmt: skip
    when = (send_at or datetime.now(UTC)).isoformat()
    return await create_campaign(
        api, sec, batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": when}, **extra)
    )


async def test_scheduled_push_fan_out_sends_each_user_once_after_a_crash(
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    section: SectionKeys,
    store: Store,
    fresh_provider: ProviderServer,
) -> None:
    """A scheduled push run survives a batch dying mid-way (connection lost): every user gets exactly one message."""
    path = await provider_push(api, section, fresh_provider)
    users = [await push_user(api, section, store) for _ in range(7)]
    send_at = datetime.now(UTC) + timedelta(hours=3)
    cid = await _scheduled_push_campaign(api, section, send_at)
    fresh_provider.script(path, Reply(200), Reply(200), Reply(drop=True))  # the third call: outcome unknown
    run_id = await _start_run(api, section, cid)
    progress = await run_result(env.client, run_id)
    assert progress.sent == 7, progress
    keys = [r.headers["idempotency-key"] for r in fresh_provider.to(path)]
    assert len(keys) == 8 and len(set(keys)) == 7  # only the call lost in flight was repeated, same key
    assert len(fresh_provider.deliveries) == 7
    sends = await campaign_sends(store, cid)
    assert sorted(s.user_id for s in sends) == sorted(users) and all(s.status == "accepted" for s in sends)
    assert min(s.created_at for s in sends) >= send_at - timedelta(seconds=1)
    run = await get_run(api, section, run_id)
    assert (run["state"], run["total"], run["sent"], run["pending"]) == ("done", 7, 7, 0)


async def test_scheduled_run_is_throttled(
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    section: SectionKeys,
    store: Store,
    fresh_provider: ProviderServer,
) -> None:
    """A run never calls the provider faster than the integration's rate limit, and its shards'
    calls interleave instead of arriving together (a vendor enforcing the limit per second
    refused the second of each pair)."""
    await provider_push(api, section, fresh_provider, rate_limit_per_second=10)
    for _ in range(8):
        await push_user(api, section, store)
    cid = await _scheduled_push_campaign(api, section)
    stamps: list[float] = []
    fresh_provider.on_request = lambda _: stamps.append(time.monotonic())
    try:
        progress = await run_result(env.client, await _start_run(api, section, cid))
    finally:
        fresh_provider.on_request = None
    assert progress.sent == 8
    # 10/s shared by two shards (5/s each): the busier shard's 4+ calls span at least 0.6 s.
    assert max(stamps) - min(stamps) >= 0.55, stamps
    # Any 3 consecutive calls include 2 of one shard, sent >= 0.2 s apart (receipt jitter allowed).
    assert all(b - a >= 0.15 for a, b in zip(stamps, stamps[2:], strict=False)), stamps
    # The shards keep to alternate phases of one 10/s grid: calls ~0.1 s apart, never a pair.
    assert all(b - a >= 0.03 for a, b in zip(stamps, stamps[1:], strict=False)), stamps


async def _day_and_night_users(api: httpx.AsyncClient, sec: SectionKeys, store: Store) -> tuple[str, str]:
    """An app push integration and two push users: one where it is afternoon now, one where it is night."""
    await add_integration(api, sec, channel="app_push")
    day = await push_user(api, sec, store, zone_at_local_hour(range(11, 18)))
    night = await push_user(api, sec, store, zone_at_local_hour(range(0, 6)))
    return day, night


async def test_quiet_hours_wait_for_each_recipients_window(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """With a 09:00-21:00 window, a daytime user is messaged now and a night-time user at 09:00 their time."""
    day, night = await _day_and_night_users(api, section, store)
    window = {"start": "09:00", "end": "21:00", "timezone": "UTC", "outside": "wait"}
    cid = await _scheduled_push_campaign(api, section, send_window=window)
    started = datetime.now(UTC)
    progress = await run_result(env.client, await _start_run(api, section, cid))
    assert progress.sent == 2, progress
    sends = {s.user_id: s.created_at for s in await campaign_sends(store, cid)}
    assert sends[day] - started < timedelta(minutes=5)
    with store.session() as s:
        night_user = s.get(User, night)
        assert night_user is not None
        tz = ZoneInfo(night_user.attributes["timezone"])
    local = sends[night].astimezone(tz)
    assert (local.hour, local.minute) == (9, 0) and sends[night] > started + timedelta(hours=2), local


async def test_quiet_hours_drop_policy_skips_night_recipients(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """With outside='drop', a recipient in their night is skipped (reason quiet_hours), never sent later."""
    day, _ = await _day_and_night_users(api, section, store)
    window = {"start": "09:00", "end": "21:00", "outside": "drop"}
    cid = await _scheduled_push_campaign(api, section, send_window=window)
    progress = await run_result(env.client, await _start_run(api, section, cid))
    assert (progress.sent, progress.skipped) == (1, 1), progress
    assert [s.user_id for s in await campaign_sends(store, cid)] == [day]


async def test_scheduled_run_resumes_on_a_new_worker_after_the_first_dies(
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    section: SectionKeys,
    store: Store,
    settings: Settings,
    fresh_provider: ProviderServer,
) -> None:
    """A worker stopped mid-batch (activity cancelled during a provider call): a new worker finishes the run,
    nobody is messaged twice, and the one call whose outcome was unknown is repeated under its key."""
    path = await provider_push(api, section, fresh_provider)
    users = [await push_user(api, section, store) for _ in range(6)]
    cid = await _scheduled_push_campaign(api, section)
    fresh_provider.script(path, Reply(200), Reply(200), Reply(200, delay=30))  # the third hangs
    third_call = asyncio.Event()
    loop = asyncio.get_running_loop()
    fresh_provider.on_request = lambda _: (
        loop.call_soon_threadsafe(third_call.set) if len(fresh_provider.to(path)) == 3 else None
    )
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
        reason="test", state="waiting", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    queue = "crash-" + secrets.token_hex(4)
    # No graceful drain: a crash. One recipient at a time, so exactly the third call is in flight when
    # it dies (with several senders, every call in flight then is repeated: test_broadcast_concurrency.py).
    abrupt = settings.model_copy(update={"delivery_timeout": timedelta(0), "broadcast_concurrency": 1})
    inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1, plan_scheduled=True)
    try:
        async with build_worker(env.client, abrupt, store, task_queue=queue) as first:
            task = asyncio.create_task(first.run())
            handle = await env.client.start_workflow(
                BroadcastWorkflow.run, inp, id=broadcast_workflow_id(run.id), task_queue=queue
            )
            await asyncio.wait_for(third_call.wait(), 30)
            await first.shutdown()
            await asyncio.gather(task, return_exceptions=True)
        async with build_worker(env.client, settings, store, task_queue=queue) as second, second:
            progress = await asyncio.wait_for(handle.result(), 90)
    finally:
        fresh_provider.on_request = None
    assert progress.sent == 6, progress
    keys = [r.headers["idempotency-key"] for r in fresh_provider.to(path)]
    assert len(set(keys)) == 6 and len(keys) == 7, keys  # only the interrupted call was repeated
    assert len(fresh_provider.deliveries) == 6
    sends = await campaign_sends(store, cid)
    assert sorted(s.user_id for s in sends) == sorted(users) and all(s.status == "accepted" for s in sends)
    assert sum(s.possible_duplicate for s in sends) == 1  # the repeated call is flagged, never hidden
