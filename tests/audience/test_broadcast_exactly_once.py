"""Batched runs keep journeys' exactly-once rules (activities/delivery.py, docs/reliability.md).

- One content per send: a recipient's retry sends the message its first attempt composed (kept
  encrypted on the send row), or fails without fallback if the address changed meanwhile.
- A vendor that honours the idempotency key (Klaviyo) is flagged a possible duplicate when an
  attempt's outcome is unknown: refusals after a lost answer do not say it was not delivered, so
  the give-up keeps its cap slot and falls back to no other channel; its acceptance of a retry
  settles it.
- A recipient skipped while its send is left in flight (a worker that died mid-call) closes that
  send as possibly delivered: flagged, its cap slot kept, counted so by the report counters.
- A skipped recipient's open sends and another recipient's recorded answer, committed at once on
  PostgreSQL, take the run row and the report counters in one order (no deadlock).

Real Temporal test server, real store, local provider server.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities import broadcast as broadcast_activities
from activities.broadcast import BroadcastActivities
from activities.delivery import RECIPIENT_CHANGED
from activities.frozen_message import FrozenMessage
from domain.caps import CapPolicy
from domain.reports import aggregate
from domain.tracking import Signer
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store import report_rollup
from store import reports as q
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.engine import Store
from store.sends import MAYBE_DELIVERED
from store.tables import Campaign, CapReservation, OptIn, Product, Send, User
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
from tests.helpers import (
    SectionKeys,
    add_integration,
    collect,
    create_campaign,
    email_for,
    opt_in,
    outbox,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Received, Reply
from workflows.feed_models import BatchRequest, BroadcastInput

CUT = Reply(202, {"id": "e1"}, truncate=True)  # processed, then the connection reset mid-answer
REUSED = "Keys for idempotent requests can only be used with the same parameters they were first used with"
WINDOW = timedelta(days=7)


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _phone() -> str:
    return "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))


async def _loyalty_run(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, store: Store, spec: dict[str, Any],
    people: list[str],
) -> tuple[str, str]:  # fmt: skip
    """A Change in User Attribute campaign (loyalty Bronze -> Silver) run over `people` (email and
    SMS campaigns are feed-driven): (campaign, run)."""
    spec["attribute_change"] = {
        "attribute": "loyalty", "old": [{"op": "eq", "value": "Bronze"}], "new": [{"op": "eq", "value": "Silver"}],
    }  # fmt: skip
    cid = await create_campaign(api, sec, spec)
    with store.session() as s:
        cuids = [str(u.cuid) for u in (s.get(User, uid) for uid in people) if u is not None]
    feed = await create_feed(api, sec, kind="user")
    await upload_feed(api, env.client, sec, feed, csv_bytes("cuid,loyalty", *(f"{c},Bronze" for c in cuids)))
    summary = await upload_feed(api, env.client, sec, feed, csv_bytes("cuid,loyalty", *(f"{c},Silver" for c in cuids)))
    (run_id,) = summary.runs
    return cid, run_id


def _recipient(store: Store, run_id: str) -> BroadcastRecipient:
    with store.session() as s:
        return s.exec(select(BroadcastRecipient).where(BroadcastRecipient.run_id == run_id)).one()


def _slot_released(store: Store, key: str) -> bool:
    with store.session() as s:
        slot = s.get(CapReservation, key)
        assert slot is not None
        return slot.released


def _report(store: Store, sec: SectionKeys, cid: str) -> tuple[int, int, int]:
    """Variation a's (send requests, failed sends, possibly delivered) from the counters, checked
    equal to the raw recompute."""
    now = datetime.now(UTC)
    span = (now - timedelta(days=30), now + timedelta(days=30))
    with store.session() as s:
        fast = aggregate(q.load(s, sec.id, cid, *span, WINDOW), WINDOW)
        raw = aggregate(q.load_raw(s, sec.id, cid, *span), WINDOW)
    names = ("send_requests", "failed_sends", "possibly_delivered")
    counted, recomputed = (
        {v: tuple(int(b.counts[n]) for n in names) for v, b in agg.variations.items()} for agg in (fast, raw)
    )
    assert counted == recomputed, (counted, recomputed)
    a = counted["a"]
    return a[0], a[1], a[2]


class FirstAnswerHeld:
    """Holds the provider's answer to the first request on `path` until the test has changed the
    world between a recipient's first attempt and its retry."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen = threading.Event()
        self.go = threading.Event()

    def __call__(self, req: Received) -> None:
        if req.path == self.path and not self.seen.is_set():
            self.seen.set()
            self.go.wait(30)

    async def wait_seen(self) -> None:
        assert await asyncio.get_running_loop().run_in_executor(None, self.seen.wait, 30), "no first attempt"


@pytest.fixture
def held(fresh_provider: ProviderServer) -> Iterator[FirstAnswerHeld]:
    hold = FirstAnswerHeld("/esp-" + secrets.token_hex(4))
    fresh_provider.on_request = hold
    try:
        yield hold
    finally:
        hold.go.set()
        fresh_provider.on_request = None


# ------------------------------------------------------------------ 1. one content per send


async def test_a_batched_retry_sends_the_first_body_though_the_catalog_changed(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, box: SecretBox,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """A Stripe-style vendor (a key's later request must carry its first body) answers the first
    attempt 503; the product the message quotes changes price before the retry. Before: the
    retry composed again, the new price under the same key was refused 422 and the recipient
    failed. The retry now sends the kept message, the very same bytes."""
    path = "/esp-" + secrets.token_hex(4)
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    products = [{"sku": "sku-1", "name": "Red dress", "price": 10.0}]
    assert (await api.put("/api/v1/products", json=products, headers=section.mgmt)).status_code < 300
    dyid, uid = await reachable_user(api, section)
    bodies: dict[str, bytes] = {}
    kept: list[str | None] = []

    def stripe_like(req: Received) -> Reply:
        key = req.headers.get("idempotency-key", "")
        if key not in bodies:
            bodies[key] = req.body
            with store.session() as s:  # the catalog changes while the vendor is busy
                product = s.get(Product, (section.id, "sku-1"))
                assert product is not None
                product.price = 99.0
                s.add(product)
            return Reply(503, "busy")
        with store.session() as s:
            send = s.get(Send, key)
            kept.append(send.message_enc if send is not None else None)
        if bodies[key] != req.body:
            return Reply(422, {"error": {"type": "idempotency_error", "message": REUSED}})
        return Reply(200, {"id": "m1"})

    fresh_provider.handler(path, stripe_like)
    payload = {"to": "${User identifier}", "price": "${Product|sku-1|price}"}
    spec = batch_campaign("user_attribute_change")
    spec["variations"][0]["steps"] = [step("Only", payload=payload)]
    cid, run_id = await _loyalty_run(api, env, section, store, spec, [uid])
    progress = await run_result(env.client, run_id, timeout=120)
    first, retry = fresh_provider.to(path)
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"]
    assert retry.body == first.body, (first.body, retry.body)
    assert (progress.sent, progress.failed) == (1, 0), progress
    assert first.json()["to"] == email_for(dyid) and float(first.json()["price"]) == 10.0
    # While the retry was in flight its message was kept, encrypted: the first attempt's content.
    [sealed] = kept
    assert sealed is not None and email_for(dyid) not in sealed
    frozen = FrozenMessage.open(box, sealed)
    assert frozen.payload == first.json() and frozen.recipient == email_for(dyid) and frozen.step_name == "Only"
    [send] = await campaign_sends(store, cid)
    assert (send.status, send.attempts, send.message_enc) == ("accepted", 2, None), send
    assert _recipient(store, run_id).status == "sent"


async def test_a_new_address_between_batched_attempts_fails_the_recipient_without_fallback(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer, held: FirstAnswerHeld,
) -> None:  # fmt: skip
    """The user's email changes (the new one opted in, the old one out) while the vendor answers
    the first attempt 503. Before: the retry composed new content for the new address and sent it
    under the old key. Now: no second call, the send and the recipient fail with the journeys'
    reason, and SMS (next in the priority) is not tried."""
    fresh_provider.script(held.path, Reply(503, "busy"))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(held.path)})
    await add_integration(api, section, "sms")  # the outbox: a fallback would be seen there
    dyid, uid = await reachable_user(api, section, phone=_phone())
    spec = batch_campaign("user_attribute_change", channels=("email", "sms"))
    cid, run_id = await _loyalty_run(api, env, section, store, spec, [uid])
    await held.wait_seen()
    new = f"new-{secrets.token_hex(4)}@example.com"
    await opt_in(api, section, "email", "email", new)
    # An identification naming no CUID: its email sticks to the user the device belongs to.
    subscription = {"dyType": "newsletter-subscription-v1", "secondaryIdentifiers": [{"type": "email", "value": new}]}
    await collect(api, section, dyid, {"name": "Newsletter Subscription", "properties": subscription})
    old = {"identifier": {"type": "email", "value": email_for(dyid)}}
    r = await api.post("/v2/userdata/channels/email/opt-out", json=old, headers=section.ing)
    assert r.status_code == 200, r.text
    held.go.set()
    progress = await run_result(env.client, run_id, timeout=120)
    assert len(fresh_provider.to(held.path)) == 1, "no second call"
    assert (progress.sent, progress.failed) == (0, 1), progress
    assert await outbox(api, section) == [], "no fallback: the email channel is reachable, at another address"
    rec = _recipient(store, run_id)
    assert (rec.status, rec.channel, rec.reason) == ("failed", "email", RECIPIENT_CHANGED), rec
    [send] = await campaign_sends(store, cid)
    assert (send.status, send.message_enc, send.possible_duplicate) == ("failed", None, False), send
    assert RECIPIENT_CHANGED in (send.provider_response or "")
    assert new not in (send.provider_response or "") and email_for(dyid) not in (send.provider_response or "")
    assert _slot_released(store, send.key), "every attempt was answered: nothing delivered"


async def test_an_opt_out_after_a_lost_answer_falls_back_to_no_other_channel(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer, held: FirstAnswerHeld,
) -> None:  # fmt: skip
    """The vendor processes the email and the answer is lost; the user opts out of email before the
    retry. Before: the next attempt chose SMS (email no longer reachable) and sent it, leaving the
    email send in flight for good: the user got both. Now the recipient ends failed on email,
    possibly delivered, its slot kept, and no SMS goes."""
    fresh_provider.script(held.path, Reply(200, {"id": "m1"}, truncate=True))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(held.path)})
    await add_integration(api, section, "sms")  # the outbox: a fallback would be seen there
    dyid, uid = await reachable_user(api, section, phone=_phone())
    spec = batch_campaign("user_attribute_change", channels=("email", "sms"))
    cid, run_id = await _loyalty_run(api, env, section, store, spec, [uid])
    await held.wait_seen()
    old = {"identifier": {"type": "email", "value": email_for(dyid)}}
    r = await api.post("/v2/userdata/channels/email/opt-out", json=old, headers=section.ing)
    assert r.status_code == 200, r.text
    held.go.set()
    progress = await run_result(env.client, run_id, timeout=120)
    assert await outbox(api, section) == [], "no SMS: the email may well have arrived"
    assert len(fresh_provider.to(held.path)) == 1
    assert (progress.sent, progress.failed) == (0, 1), progress
    rec = _recipient(store, run_id)
    assert (rec.status, rec.channel) == ("failed", "email") and MAYBE_DELIVERED in (rec.reason or ""), rec
    [send] = await campaign_sends(store, cid)
    assert (send.status, send.possible_duplicate, send.message_enc) == ("failed", True, None), send
    assert not _slot_released(store, send.key), "the message may have reached the user: its slot stays taken"
    assert _report(store, section, cid) == (1, 1, 1)


async def test_an_opt_out_after_a_refusal_moves_to_the_next_channel_and_closes_the_first_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer, held: FirstAnswerHeld,
) -> None:  # fmt: skip
    """The vendor answers the email 503 (not delivered) and the user opts out of email before the
    retry: the SMS goes, and the email send is closed failed, unflagged, its slot given back.
    Before: the email send stayed `retrying` for good, its cap slot held."""
    fresh_provider.script(held.path, Reply(503, "busy"))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(held.path)})
    await add_integration(api, section, "sms")
    dyid, uid = await reachable_user(api, section, phone=_phone())
    spec = batch_campaign("user_attribute_change", channels=("email", "sms"))
    cid, run_id = await _loyalty_run(api, env, section, store, spec, [uid])
    await held.wait_seen()
    old = {"identifier": {"type": "email", "value": email_for(dyid)}}
    r = await api.post("/v2/userdata/channels/email/opt-out", json=old, headers=section.ing)
    assert r.status_code == 200, r.text
    held.go.set()
    progress = await run_result(env.client, run_id, timeout=120)
    assert len(await outbox(api, section)) == 1, "the SMS went"
    assert (progress.sent, progress.failed) == (1, 0), progress
    rec = _recipient(store, run_id)
    assert (rec.status, rec.channel) == ("sent", "sms"), rec
    email, sms = sorted(await campaign_sends(store, cid), key=lambda send: send.channel)
    assert (email.status, email.possible_duplicate, email.message_enc) == ("failed", False, None), email
    assert "sent on sms instead" in (email.provider_response or ""), email
    assert _slot_released(store, email.key)
    assert sms.status == "accepted", sms


# ------------------------------------------------------------------ 2. vendors honouring the key


async def _klaviyo_then_sms(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, store: Store, provider: ProviderServer,
    *replies: Reply, then: Reply,
) -> tuple[str, str]:  # fmt: skip
    """A batched run, email through Klaviyo (answering `replies`, then `then`) then SMS through
    the outbox, to one user reachable on both: (campaign, run)."""
    provider.script("/api/events", *replies)
    provider.default("/api/events", then)
    config = {"api_key": "pk_test", "metric_name": "Rejoin Batch", "base_url": provider.url()}
    await add_integration(api, sec, kind="klaviyo", config=config)
    await add_integration(api, sec, "sms")
    _, uid = await reachable_user(api, sec, phone=_phone())
    spec = batch_campaign("user_attribute_change", channels=("email", "sms"))
    return await _loyalty_run(api, env, sec, store, spec, [uid])


async def test_a_key_honouring_vendor_refusing_after_a_lost_answer_keeps_the_slot_and_falls_back_to_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Klaviyo processes the first attempt and its answer is lost; it answers every retry 503 until
    the recipient's budget is spent. Before: never flagged (the vendor honours the key), so the
    give-up was a definite failure: its slot freed and the SMS sent too."""
    monkeypatch.setattr(broadcast_activities, "RECIPIENT_RETRY_BUDGET", timedelta(minutes=2))
    cid, run_id = await _klaviyo_then_sms(api, env, section, store, fresh_provider, CUT, then=Reply(503))
    progress = await run_result(env.client, run_id, timeout=120)
    assert await outbox(api, section) == [], "no SMS: the email may well have arrived"
    assert (progress.sent, progress.failed) == (0, 1), progress
    [send] = await campaign_sends(store, cid)
    assert (send.status, send.possible_duplicate, send.message_enc) == ("failed", True, None), send
    assert send.attempts >= 2 and MAYBE_DELIVERED in (send.provider_response or ""), send
    assert not _slot_released(store, send.key), "the message may have reached the user: its slot stays taken"
    rec = _recipient(store, run_id)
    assert (rec.status, rec.channel) == ("failed", "email") and MAYBE_DELIVERED in (rec.reason or ""), rec
    assert _report(store, section, cid) == (1, 1, 1)


async def test_a_key_honouring_vendor_accepting_the_retry_settles_a_lost_answer(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """The retry under the same key is accepted: Klaviyo delivered the event once, so the send is
    accepted and no possible duplicate (flagged while its outcome was unknown, then cleared)."""
    cid, run_id = await _klaviyo_then_sms(api, env, section, store, fresh_provider, CUT, then=Reply(202, ""))
    progress = await run_result(env.client, run_id, timeout=120)
    assert (progress.sent, progress.failed) == (1, 0), progress
    [send] = await campaign_sends(store, cid)
    assert (send.status, send.possible_duplicate, send.attempts, send.message_enc) == ("accepted", False, 2, None)
    assert await outbox(api, section) == []
    assert _report(store, section, cid) == (1, 0, 0)


# ------------------------------------------------------------------ 3 and 4: activity level


@pytest.fixture
def box(settings: Settings) -> SecretBox:
    return SecretBox(settings.secret_keys)


async def _push_run(
    api: httpx.AsyncClient, sec: SectionKeys, store: Store, provider: ProviderServer, users: int
) -> tuple[str, BroadcastRun, list[str]]:
    """A scheduled app push campaign's run (not started: the test drives its activities) over
    `users` new users: (campaign, run, users)."""
    await provider_push(api, sec, provider)
    people = [await push_user(api, sec, store) for _ in range(users)]
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, sec, spec)
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=sec.id, campaign_id=cid, campaign_version=1,
        reason="test", state="sending", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    return cid, run, people


def _activities(store: Store, registry: ProviderRegistry, box: SecretBox, settings: Settings) -> BroadcastActivities:
    return BroadcastActivities(
        store, registry, box, CapPolicy(5, timedelta(hours=24)), timedelta(hours=24),
        signer=Signer(settings.secret_keys), public_url="http://rejoin.test", concurrency=8,
    )  # fmt: skip


async def test_a_recipient_skipped_after_an_unanswered_attempt_closes_its_send_possibly_delivered(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, box: SecretBox,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """A recipient's send is left in flight (its worker died mid-call: the call may have been
    delivered), then the recipient opts out: the next batch skips them and closes the send. Before:
    failed and unflagged, its slot freed, counted a definite failure. Now: flagged, its slot kept,
    counted possibly delivered, as a journey's give-up."""
    cid, run, (uid,) = await _push_run(api, section, store, fresh_provider, 1)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        acts = _activities(store, ProviderRegistry(store, http, allow_private_urls=True), box, settings)
        inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1)
        assert await asyncio.to_thread(ActivityEnvironment().run, acts.plan_audience, inp) == 1
        req = BatchRequest(run_id=run.id, shard=0, shards=1, as_of=datetime.now(UTC), limit=200)
        spec, _, _ = acts._load_batch(req)
        ready = acts._prepare(req, spec, uid)  # the send marked in flight; the call's worker dies
        assert not isinstance(ready, str), ready
        with store.session() as s:  # then the user opts out
            for row in s.exec(select(OptIn).where(OptIn.section_id == section.id)).all():
                row.opted_in = False
                s.add(row)
        retry = req.model_copy(update={"as_of": datetime.now(UTC)})
        result = await ActivityEnvironment().run(acts.deliver_batch, retry)
    # Skipped (docs/audience.md: a recipient skipped before its retry counts `skipped`, the call it
    # began `failed_sends` and `possibly_delivered`), as when the campaign is paused meanwhile.
    assert (result.failed, result.skipped, result.more_due) == (0, 1, False), result
    assert fresh_provider.requests == []
    [send] = await campaign_sends(store, cid)
    assert (send.status, send.possible_duplicate, send.message_enc) == ("failed", True, None), send
    answer = send.provider_response or ""
    assert "not retried" in answer and MAYBE_DELIVERED in answer, answer
    rec = _recipient(store, run.id)
    assert (rec.status, rec.reason) == ("skipped", "not_opted_in"), rec
    assert not _slot_released(store, send.key), "the message may have reached the user: its slot stays taken"
    assert _report(store, section, cid) == (1, 1, 1)


async def test_a_skipped_recipients_open_send_and_a_recorded_answer_commit_together(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, box: SecretBox,
    fresh_provider: ProviderServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Two senders commit at once: one records recipient A's answer (run row, then the report
    counters), the other skips recipient B whose send was left in flight (B's open send counted,
    and the run row). Forced to interleave (A holds the run row when B starts; A counts only after
    B has counted or ~3 s have passed): before, B counted its send before the run row and, on
    PostgreSQL, each waited for the other's rows until one was aborted as a deadlock. Now both
    take the run row first and commit, one after the other. (SQLite has one writer at a time: the
    interleaving cannot happen there, so it passes either way.)"""
    cid, run, (a, b) = await _push_run(api, section, store, fresh_provider, 2)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        acts = _activities(store, ProviderRegistry(store, http, allow_private_urls=True), box, settings)
        inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1)
        assert await asyncio.to_thread(ActivityEnvironment().run, acts.plan_audience, inp) == 2
        req = BatchRequest(run_id=run.id, shard=0, shards=1, as_of=datetime.now(UTC), limit=200)
        spec, _, _ = acts._load_batch(req)
        ready_a, ready_b = acts._prepare(req, spec, a), acts._prepare(req, spec, b)
        assert not isinstance(ready_a, str) and not isinstance(ready_b, str)
        with store.session() as s:  # paused: B's next preparation skips B and closes its open send
            campaign = s.get(Campaign, cid)
            assert campaign is not None
            campaign.status = "paused"
            s.add(campaign)

        real = report_rollup.count_send
        a_counting, b_counted = threading.Event(), threading.Event()

        def count_send(s: Any, send: Send, previous: str | None, **kw: Any) -> None:
            if send.key == ready_a.send_key:
                a_counting.set()  # A holds the run row by now
                b_counted.wait(3)
                real(s, send, previous, **kw)
            else:
                real(s, send, previous, **kw)
                b_counted.set()

        monkeypatch.setattr(report_rollup, "count_send", count_send)
        errors: list[BaseException] = []

        def run_in_thread(fn: Callable[[], object]) -> threading.Thread:
            def target() -> None:
                try:
                    fn()
                except BaseException as err:  # noqa: BLE001 - reported by the assertion below
                    errors.append(err)

            thread = threading.Thread(target=target)
            thread.start()
            return thread

        sender_a = run_in_thread(lambda: acts._record(req, a, ready_a, "sent", "", 200))
        assert await asyncio.to_thread(a_counting.wait, 10)
        sender_b = run_in_thread(lambda: acts._prepare(req, spec, b))
        for thread in (sender_a, sender_b):
            await asyncio.to_thread(thread.join, 30)
    assert errors == [], errors
    sends = {s.user_id: s for s in await campaign_sends(store, cid)}
    assert (sends[a].status, sends[b].status, sends[b].possible_duplicate) == ("accepted", "failed", True), sends
    with store.session() as s:
        row = s.get(BroadcastRun, run.id)
        assert row is not None and (row.sent, row.skipped) == (1, 1), row
    assert _report(store, section, cid) == (2, 1, 1)
