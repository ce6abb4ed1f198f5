"""Helpers for feed and batched-campaign tests: feeds through the API, runs to completion."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.broadcast import BroadcastActivities
from settings import Settings
from store import objects
from store.broadcast_tables import BroadcastRun
from store.engine import Store
from store.tables import Send, User
from tests.helpers import SectionKeys, add_integration, collect, step
from tests.provider_server import ProviderServer
from workflows.broadcast import BroadcastWorkflow
from workflows.feed_models import BatchRequest, BroadcastInput, FeedSyncSummary, RunProgress
from workflows.feeds import FeedSyncWorkflow
from workflows.ids import broadcast_workflow_id

# The buckets the tests' settings open to s3 feeds (tests/conftest.py); the second is never created.
FEED_BUCKET = "rejoin-test-feeds"
ABSENT_FEED_BUCKET = "rejoin-test-feeds-absent"
R = TypeVar("R")
T = TypeVar("T")


def feed_bucket(settings: Settings) -> Any:
    """A boto3 client with FEED_BUCKET created (once for the session's S3; a section writes its own folder)."""
    s3 = objects.client(settings)
    objects.ensure_bucket(s3, FEED_BUCKET)
    return s3


async def create_feed(api: httpx.AsyncClient, sec: SectionKeys, kind: str = "product", **extra: Any) -> str:
    r = await api.post(
        "/api/v1/feeds", json={"kind": kind, "name": f"{kind} feed", **extra}, headers=sec.mgmt
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def upload_feed(
    api: httpx.AsyncClient, client: Client, sec: SectionKeys, feed_id: str, content: bytes
) -> FeedSyncSummary:
    """Upload a feed file and wait for its sync workflow to finish."""
    r = await api.put(f"/api/v1/feeds/{feed_id}/file", content=content, headers=sec.mgmt)
    assert r.status_code == 202, r.text
    handle = client.get_workflow_handle_for(FeedSyncWorkflow.run, r.json()["workflow_id"])
    return await asyncio.wait_for(handle.result(), 60)


async def feed_syncs(api: httpx.AsyncClient, sec: SectionKeys, feed_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/feeds/{feed_id}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return list(r.json()["syncs"])


async def run_result(client: Client, run_id: str, timeout: float = 60) -> RunProgress:
    handle = client.get_workflow_handle_for(BroadcastWorkflow.run, broadcast_workflow_id(run_id))
    return await asyncio.wait_for(handle.result(), timeout)


async def get_run(api: httpx.AsyncClient, sec: SectionKeys, run_id: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/runs/{run_id}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dict(r.json())


def csv_bytes(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def zone_at_local_hour(hours: range) -> str:
    """A fixed-offset zone where the local hour now is in `hours` (quiet-hours tests)."""
    now = datetime.now(UTC)
    for offset in range(-12, 15):
        name = f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}" if offset else "Etc/GMT"
        if now.astimezone(ZoneInfo(name)).hour in hours:
            return name
    raise AssertionError("no zone found")


def crash_then_resume(fn: Callable[[R], T], req: R) -> tuple[list[dict[str, Any]], list[dict[str, Any]], T]:
    """Run a heartbeating sync activity that dies at its second heartbeat, then a retry resuming
    from the last heartbeat (as Temporal would). Returns (heartbeats before, heartbeats after, result)."""
    beats: list[dict[str, Any]] = []

    def die_on_second(*details: Any) -> None:
        beats.append(dict(details[0]))
        if len(beats) == 2:
            raise RuntimeError("worker lost")

    crashing = ActivityEnvironment()
    crashing.on_heartbeat = die_on_second
    try:
        crashing.run(fn, req)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the first attempt should have died at its second heartbeat")
    resumed = ActivityEnvironment()
    resumed.info = dataclasses.replace(resumed.info, heartbeat_details=[beats[-1]])
    later: list[dict[str, Any]] = []
    resumed.on_heartbeat = lambda *d: later.append(dict(d[0]))
    return beats, later, resumed.run(fn, req)


def batch_campaign(kind: str, channels: tuple[str, ...] = ("email",), **extra: Any) -> dict[str, Any]:
    return {
        "name": f"{kind} campaign",
        "type": kind,
        "channel_priority": list(channels),
        "variations": [{"id": "a", "name": "A", "share": 100, "steps": [step("Only", channels=channels)]}],
        **extra,
    }


def push_opt_in() -> dict[str, Any]:
    """An app push opt-in event with a token of its own (legacy `pushID` form)."""
    token = "tok-" + secrets.token_hex(6)
    return {"name": "Opt-in", "properties": {"dyType": "message-optin-v1", "pushID": token, "channelType": "APP_PUSH"}}


async def push_user(
    api: httpx.AsyncClient, sec: SectionKeys, store: Store, timezone: str | None = None
) -> str:
    """A user opted in to app push with a token (legacy opt-in event), optionally with a timezone attribute."""
    dyid = str(secrets.randbelow(10**18))
    await collect(api, sec, dyid, push_opt_in())
    r = await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)
    uid = str(r.json()["id"])
    if timezone:
        with store.session() as s:
            user = s.get(User, uid)
            assert user is not None
            user.attributes = {"timezone": timezone}
            s.add(user)
    return uid


async def provider_push(
    api: httpx.AsyncClient, sec: SectionKeys, provider: ProviderServer, **config: Any
) -> str:
    """An app push integration posting to the local provider server; returns the path it posts to."""
    path = "/push-" + secrets.token_hex(3)
    rate = config.pop("rate_limit_per_second", None)
    extra = {"rate_limit_per_second": rate} if rate is not None else {}
    await add_integration(
        api, sec, channel="app_push", kind="custom_http", config={"url": provider.url(path), **config}, **extra
    )
    return path


async def get_product(api: httpx.AsyncClient, sec: SectionKeys, sku: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/products/{sku}", headers=sec.mgmt)
    if r.status_code == 404:
        return {}  # no such product
    assert r.status_code == 200, r.text
    return dict(r.json())


async def campaign_sends(store: Store, campaign_id: str) -> list[Send]:
    with store.session() as s:
        return list(s.exec(select(Send).where(Send.campaign_id == campaign_id)).all())


def driven_run(store: Store, section_id: str, campaign_id: str) -> BroadcastRun:
    """A sending run of the campaign's first version, its workflow not started: the test drives its
    activities (`planned_batch`, then `deliver_batch`)."""
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section_id, campaign_id=campaign_id, campaign_version=1,
        reason="test", state="sending", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    return run


async def planned_batch(acts: BroadcastActivities, run: BroadcastRun, recipients: int) -> BatchRequest:
    """List the run's audience (one shard), checking it has `recipients`; the batch request for now."""
    inp = BroadcastInput(run_id=run.id, section_id=run.section_id, campaign_id=run.campaign_id, shards=1)
    assert await asyncio.to_thread(ActivityEnvironment().run, acts.plan_audience, inp) == recipients
    return BatchRequest(run_id=run.id, shard=0, shards=1, as_of=datetime.now(UTC), limit=200)
