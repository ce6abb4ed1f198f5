"""A shard's batch sends to several recipients at once (activities/fan_out.py), and keeps what the
one-at-a-time loop guaranteed: every recipient sent at most once and counted once, a throttle
never exceeded in any second, a vendor's Retry-After pausing the shard, a transient fault
deferring only its recipient, a permanent one falling back, a cancelled batch leaving nobody
marked sent who was not. Real Temporal, store and local provider server."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.broadcast import BroadcastActivities
from domain.caps import CapPolicy
from domain.tracking import Signer
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.broadcasts import shard_of
from store.engine import Store
from store.tables import User
from tests.audience.feed_helpers import (
    batch_campaign,
    campaign_sends,
    create_feed,
    csv_bytes,
    provider_push,
    push_user,
    run_result,
    upload_feed,
)
from tests.helpers import SectionKeys, add_integration, create_campaign, email_for, reachable_user
from tests.provider_server import ProviderServer, Received, Reply
from workflows.broadcast import BroadcastWorkflow
from workflows.feed_models import BatchRequest, BroadcastInput, RunProgress
from workflows.ids import broadcast_workflow_id

TOKEN = re.compile(rb"tok-[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


class Stamps:
    """When each provider call arrived (monotonic), to tell how many were in flight at once."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self, _req: Received) -> None:
        self.add()

    def add(self) -> None:
        self.at.append(time.monotonic())

    def most_in_flight(self, answer_after: float) -> int:
        """The most calls in flight at once, each answered `answer_after` seconds after it arrived."""
        at = sorted(self.at)
        span = answer_after * 0.8  # receipt jitter allowed
        return max((sum(1 for b in at[i:] if b - a < span) for i, a in enumerate(at)), default=0)


async def _run_one_shard(
    api: httpx.AsyncClient, env: WorkflowEnvironment, settings: Settings, store: Store, sec: SectionKeys,
    spec: dict[str, Any],
) -> tuple[str, str, RunProgress]:  # fmt: skip
    """A scheduled campaign's run over the section's users, in one shard: (campaign, run, progress)."""
    spec = {"schedule": {"send_at": datetime.now(UTC).isoformat()}, **spec}
    cid = await create_campaign(api, sec, spec)
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=sec.id, campaign_id=cid, campaign_version=1,
        reason="test", state="waiting", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    inp = BroadcastInput(run_id=run.id, section_id=sec.id, campaign_id=cid, shards=1, plan_scheduled=True)
    handle = await env.client.start_workflow(
        BroadcastWorkflow.run, inp, id=broadcast_workflow_id(run.id), task_queue=settings.task_queue
    )
    return cid, run.id, await asyncio.wait_for(handle.result(), 180)


def _token(req: Received) -> str:
    found = TOKEN.search(req.body)
    assert found is not None, req.body
    return found.group().decode()


def _recipients(store: Store, run_id: str) -> list[BroadcastRecipient]:
    with store.session() as s:
        return list(s.exec(select(BroadcastRecipient).where(BroadcastRecipient.run_id == run_id)).all())


def _run_row(store: Store, run_id: str) -> BroadcastRun:
    with store.session() as s:
        run = s.get(BroadcastRun, run_id)
        assert run is not None
        return run


async def test_a_batch_has_several_provider_calls_in_flight(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """40 recipients of one shard against a vendor answering in 200 ms: not 40 calls one after the other
    (8 s), but up to `REJOIN_BROADCAST_CONCURRENCY` at once; each recipient called once."""
    path = await provider_push(api, section, fresh_provider)
    fresh_provider.default(path, Reply(200, {"ok": True}, delay=0.2))
    for _ in range(40):
        await push_user(api, section, store)
    stamps = Stamps()
    fresh_provider.on_request = stamps
    try:
        cid, run_id, progress = await _run_one_shard(
            api, env, settings, store, section, batch_campaign("scheduled", channels=("app_push",))
        )
    finally:
        fresh_provider.on_request = None
    assert (progress.sent, progress.failed, progress.skipped) == (40, 0, 0), progress
    keys = Counter(r.headers["idempotency-key"] for r in fresh_provider.to(path))
    assert len(keys) == 40 and set(keys.values()) == {1}, keys
    assert 1 < stamps.most_in_flight(0.2) <= settings.broadcast_concurrency, sorted(stamps.at)
    sends = await campaign_sends(store, cid)
    assert len(sends) == 40 and all(s.status == "accepted" and s.attempts == 1 for s in sends)
    run = _run_row(store, run_id)
    assert (run.sent, run.failed, run.skipped) == (40, 0, 0)


async def test_a_throttle_holds_in_every_second_with_calls_in_flight_together(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """A run throttled to 10/s against a vendor answering in 350 ms: calls overlap (one at a time
    could not reach 10/s) yet keep to the grid, never 11 in a second."""
    path = await provider_push(api, section, fresh_provider)
    fresh_provider.default(path, Reply(200, {"ok": True}, delay=0.35))
    for _ in range(25):
        await push_user(api, section, store)
    stamps = Stamps()
    fresh_provider.on_request = stamps
    try:
        _, _, progress = await _run_one_shard(
            api, env, settings, store, section,
            batch_campaign("scheduled", channels=("app_push",), throttle_per_second=10),
        )  # fmt: skip
    finally:
        fresh_provider.on_request = None
    assert progress.sent == 25, progress
    at = sorted(stamps.at)
    assert len(at) == 25
    # Any 11 consecutive calls span a second or more (receipt jitter allowed): at most 10 in any second.
    assert all(b - a >= 0.95 for a, b in zip(at, at[10:], strict=False)), at
    # One per 0.1 s slot, never a pair; a call may arrive up to half a slot late (its store step on a
    # busy CI machine: 56 ms after the one before it, once), the second-long windows above still hold.
    assert all(b - a >= 0.05 for a, b in zip(at, at[1:], strict=False)), at
    assert stamps.most_in_flight(0.35) >= 2, at


async def test_a_vendor_429_mid_batch_pauses_without_losing_or_repeating_anyone(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """A 429 with Retry-After while many calls are in flight: those end and are recorded in the
    same batch, no call starts until the Retry-After has passed, and in the end everyone is sent
    exactly once, the throttled recipient on its second attempt, all counted once."""
    n = settings.broadcast_concurrency + 13  # more recipients than senders: some are left when it pauses
    path = await provider_push(api, section, fresh_provider)
    users = [await push_user(api, section, store) for _ in range(n)]
    arrivals: list[tuple[float, str]] = []

    def answer(req: Received) -> Reply:
        arrivals.append((time.monotonic(), _token(req)))
        if len(arrivals) == 5:
            return Reply(429, {"error": "slow down"}, headers={"Retry-After": "30"})
        return Reply(200, {"ok": True}, delay=0.1)

    fresh_provider.handler(path, answer)
    cid, run_id, progress = await _run_one_shard(
        api, env, settings, store, section, batch_campaign("scheduled", channels=("app_push",))
    )
    assert (progress.sent, progress.failed, progress.skipped) == (n, 0, 0), progress
    keys = Counter(r.headers["idempotency-key"] for r in fresh_provider.to(path))
    assert len(keys) == n and sorted(keys.values()) == [1] * (n - 1) + [2], keys
    sends = await campaign_sends(store, cid)
    assert sorted(s.user_id for s in sends) == sorted(users)
    assert all(s.status == "accepted" and not s.possible_duplicate for s in sends)
    [again] = [s for s in sends if s.attempts == 2]
    assert sorted(s.attempts for s in sends) == [1] * (n - 1) + [2]  # a withdrawn recipient counts no attempt
    # The 429 came while calls were in flight (answered 100 ms after they arrived): those ended and
    # were recorded as sent in its batch.
    at_429, throttled = arrivals[4]
    in_flight = {token for at, token in arrivals[:4] if at_429 - at < 0.08}
    assert in_flight, arrivals[:5]
    first_batch = [s for s in sends if s.created_at == again.created_at]
    assert len(first_batch) >= 5 and again.user_id in {s.user_id for s in first_batch}
    # Everyone else was called by a batch starting after the Retry-After (workflow time).
    later = [s for s in sends if s.created_at != again.created_at]
    assert later and all(s.created_at >= again.created_at + timedelta(seconds=30) for s in later)
    assert len(first_batch) + len(later) == n
    run = _run_row(store, run_id)
    assert (run.sent, run.failed, run.skipped) == (n, 0, 0)
    assert {r.status for r in _recipients(store, run_id)} == {"sent"}


def _phone() -> str:
    return "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))


async def test_mixed_faults_end_each_recipient_in_one_status_sent_at_most_once(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """SMS first, email as fallback, calls in flight together: a transient SMS fault retries that
    recipient only, a permanent one falls back to email, a permanent fault on both fails the
    recipient. Each ends in one status, counted once; no message is delivered twice."""
    sms, email = "/sms-" + secrets.token_hex(3), "/email-" + secrets.token_hex(3)
    await add_integration(api, section, channel="sms", kind="custom_http", config={"url": fresh_provider.url(sms)})
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(email)})
    people: list[tuple[str, str, str]] = []  # (user id, phone, email)
    for _ in range(24):
        phone = _phone()
        dyid, uid = await reachable_user(api, section, phone=phone)
        people.append((uid, phone, email_for(dyid)))
    kind = {uid: ("fallback", "transient", "fine", "fails")[i % 4] for i, (uid, _, _) in enumerate(people)}
    by_phone = {phone: uid for uid, phone, _ in people}
    by_email = {mail: uid for uid, _, mail in people}
    sms_calls: Counter[str] = Counter()
    shard_stamps = {0: Stamps(), 1: Stamps()}  # a run has 2 shards: calls in flight together within one

    def whose(req: Received, table: dict[str, str]) -> str:
        [uid] = [uid for ident, uid in table.items() if ident.encode() in req.body]
        return uid

    def answer_sms(req: Received) -> Reply:
        uid = whose(req, by_phone)
        sms_calls[uid] += 1
        shard_stamps[shard_of(uid, 2)].add()
        if kind[uid] in ("fallback", "fails"):
            return Reply(400, {"message": "invalid 'To' number"}, delay=0.05)
        if kind[uid] == "transient" and sms_calls[uid] == 1:
            return Reply(503, {"error": "busy"}, delay=0.05)
        return Reply(200, {"ok": True}, delay=0.1)

    def answer_email(req: Received) -> Reply:
        uid = whose(req, by_email)
        shard_stamps[shard_of(uid, 2)].add()
        if kind[uid] == "fails":
            return Reply(422, {"message": "mailbox syntax"}, delay=0.05)
        return Reply(200, {"ok": True}, delay=0.1)

    fresh_provider.handler(sms, answer_sms)
    fresh_provider.handler(email, answer_email)
    # A Change in User Attribute campaign (loyalty Bronze -> Silver) over everyone: SMS campaigns are feed-driven.
    spec = batch_campaign("user_attribute_change", channels=("sms", "email"))
    spec["attribute_change"] = {
        "attribute": "loyalty", "old": [{"op": "eq", "value": "Bronze"}], "new": [{"op": "eq", "value": "Silver"}],
    }  # fmt: skip
    cid = await create_campaign(api, section, spec)
    with store.session() as s:
        cuids = [str(u.cuid) for u in (s.get(User, uid) for uid, _, _ in people) if u is not None]
    feed = await create_feed(api, section, kind="user")
    await upload_feed(api, env.client, section, feed, csv_bytes("cuid,loyalty", *(f"{c},Bronze" for c in cuids)))
    silver = csv_bytes("cuid,loyalty", *(f"{c},Silver" for c in cuids))
    summary = await upload_feed(api, env.client, section, feed, silver)
    (run_id,) = summary.runs
    progress = await run_result(env.client, run_id, timeout=180)
    assert (progress.sent, progress.failed, progress.skipped) == (18, 6, 0), progress
    assert max(x.most_in_flight(0.05) for x in shard_stamps.values()) > 1
    recipients = {r.user_id: r for r in _recipients(store, run_id)}
    assert len(recipients) == 24
    want = {"fallback": ("sent", "email"), "transient": ("sent", "sms"), "fine": ("sent", "sms"),
            "fails": ("failed", "email")}  # fmt: skip
    assert {uid: (r.status, r.channel) for uid, r in recipients.items()} == {u: want[k] for u, k in kind.items()}
    # Transient faults: that recipient's SMS called twice under one key, everyone else's once.
    assert sms_calls == {uid: 2 if k == "transient" else 1 for uid, k in kind.items()}, sms_calls
    delivered = Counter(r.headers["idempotency-key"] for r in fresh_provider.deliveries)
    assert delivered and set(delivered.values()) == {1}
    sends = await campaign_sends(store, cid)
    accepted = Counter(s.user_id for s in sends if s.status == "accepted")
    assert accepted == {uid: 1 for uid, k in kind.items() if k != "fails"}, accepted
    assert not any(s.possible_duplicate or s.status in ("in_flight", "retrying") for s in sends)
    run = _run_row(store, run_id)
    assert (run.sent, run.failed, run.skipped, run.total) == (18, 6, 0, 24)


async def test_a_cancelled_batch_leaves_nobody_marked_sent_who_was_not(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    """The activity cancelled (the campaign stopped, the worker going) with calls answered, calls
    in flight and recipients prepared waiting for their throttle slot: the answered ones are
    recorded, the ones in flight stay in flight (outcome unknown), the waiting ones are withdrawn
    (no send row, no attempt). The batch's retry then sends everyone not sent, each once."""
    path = await provider_push(api, section, fresh_provider)
    users = [await push_user(api, section, store) for _ in range(12)]
    spec = batch_campaign("scheduled", channels=("app_push",), throttle_per_second=4,
                          schedule={"send_at": datetime.now(UTC).isoformat()})  # fmt: skip
    cid = await create_campaign(api, section, spec)
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
        reason="test", state="sending", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    calls: list[str] = []
    loop = asyncio.get_running_loop()
    hung = asyncio.Event()

    def answer(req: Received) -> Reply:
        calls.append(_token(req))
        if len(calls) >= 4:  # the fourth call hangs: cancelled while in flight
            loop.call_soon_threadsafe(hung.set)
            return Reply(200, {"ok": True}, delay=30)
        return Reply(200, {"ok": True})

    fresh_provider.handler(path, answer)
    box = SecretBox(settings.secret_keys)
    async with outbound_session(limit=50, timeout=10, connect=5) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        acts = BroadcastActivities(
            store, registry, box, CapPolicy(5, timedelta(hours=24)), timedelta(hours=24),
            signer=Signer(settings.secret_keys), public_url="http://rejoin.test", concurrency=8,
        )  # fmt: skip
        planning = ActivityEnvironment()
        inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1)
        assert await asyncio.to_thread(planning.run, acts.plan_audience, inp) == 12
        req = BatchRequest(run_id=run.id, shard=0, shards=1, as_of=datetime.now(UTC), limit=200)
        first = ActivityEnvironment()
        batch = asyncio.create_task(first.run(acts.deliver_batch, req))
        await asyncio.wait_for(hung.wait(), 30)
        await asyncio.sleep(0.05)  # the others prepared, waiting for their slots (4/s: the next in ~0.2 s)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        sends = {s.user_id: s for s in await campaign_sends(store, cid)}
        recipients = {r.user_id: r for r in _recipients(store, run.id)}
        sent = {uid for uid, r in recipients.items() if r.status == "sent"}
        assert len(sent) == 3 and all(sends[uid].status == "accepted" for uid in sent), sends
        unknown = [s for s in sends.values() if s.status == "in_flight"]
        assert len(unknown) == 1 and unknown[0].attempts == 1 and recipients[unknown[0].user_id].status == "pending"
        assert len(sends) == 4, sends  # the prepared recipients never called were withdrawn
        assert _run_row(store, run.id).sent == 3
        # The retry: everyone not sent is sent once; only the call lost in flight is repeated.
        def answer_now(req: Received) -> Reply:
            calls.append(_token(req))
            return Reply(200, {"ok": True})

        fresh_provider.handler(path, answer_now)
        retry = req.model_copy(update={"as_of": datetime.now(UTC)})
        result = await ActivityEnvironment().run(acts.deliver_batch, retry)
    assert (result.sent, result.processed, result.run_sent, result.more_due) == (9, 9, 12, False), result
    assert sorted(Counter(calls).values()) == [1] * 11 + [2], calls
    sends = {s.user_id: s for s in await campaign_sends(store, cid)}
    assert sorted(sends) == sorted(users) and all(s.status == "accepted" for s in sends.values())
    assert [s.user_id for s in sends.values() if s.attempts == 2] == [unknown[0].user_id]
    assert [s.user_id for s in sends.values() if s.possible_duplicate] == [unknown[0].user_id]
    run_row = _run_row(store, run.id)
    assert (run_row.sent, run_row.failed, run_row.skipped) == (12, 0, 0)
