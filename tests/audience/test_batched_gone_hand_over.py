"""A batched run's push send whose recipient the provider reports gone goes to the user's next live
subscription on the same channel, as a triggered journey's does (activities/gone_recipient.py): the
gone one is opted out, the user gets the message once, at the older subscription, and the run and
the campaign report count one send, sent (not a failure and a send)."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.broadcast import HANDED_OVER, BroadcastActivities
from activities.broadcast_batch import Batch, Ready
from activities.broadcast_plain import PlainPath
from activities.gone_recipient import MAX_GONE_RECIPIENTS
from domain.caps import CapPolicy
from providers.base import ProviderError
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.engine import Store
from store.tables import OptIn, Send
from tests.audience.feed_helpers import batch_campaign, run_result
from tests.helpers import SectionKeys, add_integration, collect, create_campaign, new_dyid, step
from tests.provider_server import ProviderServer, Received, Reply
from tests.providers.keys import ec_key, pem
from tests.providers.test_presets import jwt_token_endpoint
from tests.providers.test_push_fixes_fcm import FCM_ERROR, SCOPE, SEND, fcm_config
from tests.providers.test_web_push_identity import Browser, _endpoint_hash, _optin
from workflows.feed_models import BatchRequest, BroadcastInput

FAR = datetime(2100, 1, 1, tzinfo=UTC)
GONE = "push subscription has unsubscribed or expired"
UNREGISTERED = {"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
                          "details": [{"@type": FCM_ERROR, "errorCode": "UNREGISTERED"}]}}  # fmt: skip


async def _run(api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, channel: str) -> tuple[str, Any]:
    """A scheduled campaign on `channel` only, sent now as a batched run: its id and its progress."""
    spec = batch_campaign("scheduled", channels=(channel,), schedule={"send_at": datetime.now(UTC).isoformat()})
    spec["variations"][0]["steps"] = [step("Only", channels=(channel,), payload={"title": "Sale"})]
    cid = await create_campaign(api, sec, spec)
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=sec.mgmt)
    assert r.status_code == 202, r.text
    return cid, await run_result(env.client, str(r.json()["id"]))


async def _web_push(api: httpx.AsyncClient, sec: SectionKeys) -> None:
    vapid = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    await add_integration(api, sec, "web_push", kind="webpush", identifier_type="custom", config=vapid)


async def _subscribed(api: httpx.AsyncClient, sec: SectionKeys, provider: ProviderServer, *replies: Reply) -> tuple[
    str, list[tuple[str, Browser]]
]:  # fmt: skip
    """A user subscribed in as many browsers as `replies` (oldest first; the last is the newest, the one
    sends use), each browser's endpoint answering its reply: the user's id and (path, browser) each."""
    dyid, tag, browsers = new_dyid(), f"/bgone/{secrets.token_hex(4)}", []
    for i, reply in enumerate(replies):
        path = f"{tag}/{i}"
        provider.default(path, reply)
        browser = Browser(provider.url(path))
        await collect(api, sec, dyid, _optin(browser.as_browser_sends_it()))
        browsers.append((path, browser))
    r = await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"]), browsers


async def _totals(api: httpx.AsyncClient, sec: SectionKeys, cid: str) -> tuple[int, int, int]:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=sec.mgmt, params={"to": FAR.isoformat()})
    assert r.status_code == 200, r.text
    totals = r.json()["totals"]
    return totals["send_requests"], totals["failed_sends"], totals["provider_opt_outs"]


def _web_push_opt_ins(store: Store, sec: SectionKeys) -> dict[str, OptIn]:
    with store.session() as s:
        rows = s.exec(select(OptIn).where(OptIn.section_id == sec.id, OptIn.channel == "web_push")).all()
        return {r.value_hash: r for r in rows}


def _sends(store: Store, cid: str) -> list[Send]:
    with store.session() as s:
        return list(s.exec(select(Send).where(col(Send.campaign_id) == cid)).all())


async def test_a_batched_runs_gone_web_push_subscription_hands_over_to_the_older_one(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Five users, each with two web push subscriptions whose newest answers 410: every user gets the
    message once, at the older one, the newest are opted out by the provider, and the run and the
    report count five sends, sent. A shard's first recipient is prepared alone, the others of a batch
    in a chunk (activities/broadcast_plain.py): of five users over two shards, some are chunked."""
    vapid = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    await add_integration(api, section, "web_push", kind="webpush", identifier_type="custom", config=vapid)
    users: list[tuple[str, Browser, Browser]] = []
    for _ in range(5):
        tag = f"/bgone/{secrets.token_hex(4)}"
        old, new = Browser(fresh_provider.url(f"{tag}/old")), Browser(fresh_provider.url(f"{tag}/new"))
        fresh_provider.default(f"{tag}/old", Reply(201, ""))
        fresh_provider.default(f"{tag}/new", Reply(410, GONE))
        dyid = new_dyid()
        await collect(api, section, dyid, _optin(old.as_browser_sends_it()))
        await collect(api, section, dyid, _optin(new.as_browser_sends_it()))  # the newest: the one sends use
        users.append((tag, old, new))

    chunked: list[str] = []  # recipients the plain path prepared together (the worker runs in this process)
    plain_prepare = PlainPath.prepare

    def prepare(self: PlainPath, s: Session, req: BatchRequest, batch: Batch, user_ids: list[str]) -> dict[str, Ready]:
        ready = plain_prepare(self, s, req, batch, user_ids)
        chunked.extend(ready)
        return ready

    monkeypatch.setattr(PlainPath, "prepare", prepare)
    cid, progress = await _run(api, env, section, "web_push")
    assert (progress.sent, progress.failed, progress.skipped) == (5, 0, 0), progress
    assert len(chunked) >= 2, chunked  # the hand-over holds for chunk-prepared recipients too

    opt_ins = _web_push_opt_ins(store, section)
    for tag, old, new in users:
        assert len(fresh_provider.to(f"{tag}/new")) == 1, tag  # the gone one: called once
        (delivered,) = fresh_provider.to(f"{tag}/old")  # the older one: exactly one message
        assert old.decrypt(delivered.body)["title"] == "Sale"
        gone, live = opt_ins[_endpoint_hash(new.endpoint)], opt_ins[_endpoint_hash(old.endpoint)]
        assert (gone.opted_in, gone.source) == (False, "provider")
        assert live.opted_in
    sends = _sends(store, cid)
    assert sorted((s.status, s.possible_duplicate) for s in sends) == [("accepted", False)] * 5, sends
    # One send each, sent: no failed send, and the gone subscription is no provider opt-out of a send.
    assert await _totals(api, section, cid) == (5, 0, 0)


async def test_a_batched_runs_unregistered_app_token_hands_over_to_the_other_device(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """FCM: the newest token UNREGISTERED, the run's message goes to the user's older device, once."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    tag = secrets.token_hex(4)
    old_token, new_token = f"fcm-old-{tag}", f"fcm-new-{tag}"

    def answer(req: Received) -> Reply:
        token = req.json()["message"]["token"]
        return Reply(404, UNREGISTERED) if token == new_token else Reply(200, {"name": f"projects/p/messages/{token}"})

    fresh_provider.handler(SEND, answer)
    await add_integration(api, section, "app_push", kind="fcm", identifier_type="custom",
                          config=fcm_config(fresh_provider))  # fmt: skip
    dyid = new_dyid()
    for token in (old_token, new_token):
        await collect(api, section, dyid, {"name": "Push opt-in", "properties": {
            "dyType": "message-optin-v1", "channelType": "APP_PUSH", "pushID": token}})  # fmt: skip

    cid, progress = await _run(api, env, section, "app_push")
    assert (progress.sent, progress.failed) == (1, 0), progress
    assert [q.json()["message"]["token"] for q in fresh_provider.to(SEND)] == [new_token, old_token]
    (send,) = _sends(store, cid)
    assert (send.status, send.possible_duplicate) == ("accepted", False)
    with store.session() as s:
        rows = s.exec(select(OptIn).where(OptIn.section_id == section.id, OptIn.channel == "app_push")).all()
        assert sorted((o.opted_in, o.source) for o in rows) == [(False, "provider"), (True, "api")], rows
    assert await _totals(api, section, cid) == (1, 0, 0)


async def test_a_batched_runs_user_whose_every_subscription_is_gone_fails_as_before(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """Both subscriptions gone: each is called once and opted out, and the recipient fails, counted once
    as a failed send and a provider opt-out."""
    await _web_push(api, section)
    _, browsers = await _subscribed(api, section, fresh_provider, Reply(410, GONE), Reply(410, GONE))
    cid, progress = await _run(api, env, section, "web_push")
    assert (progress.sent, progress.failed) == (0, 1), progress
    assert [len(fresh_provider.to(path)) for path, _ in browsers] == [1, 1]
    assert not any(o.opted_in for o in _web_push_opt_ins(store, section).values())
    (send,) = _sends(store, cid)
    assert send.status == "failed" and not send.possible_duplicate
    assert await _totals(api, section, cid) == (1, 1, 1)


async def test_a_batched_hand_over_is_bounded_as_a_journeys(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """Five subscriptions, every one gone: the newest and MAX_GONE_RECIPIENTS more are called (each
    once, each opted out), then the recipient fails; the oldest is never called and stays opted in."""
    await _web_push(api, section)
    _, browsers = await _subscribed(api, section, fresh_provider, *[Reply(410, GONE)] * (MAX_GONE_RECIPIENTS + 2))
    cid, progress = await _run(api, env, section, "web_push")
    assert (progress.sent, progress.failed) == (0, 1), progress
    called = [len(fresh_provider.to(path)) for path, _ in browsers]
    assert called == [0] + [1] * (MAX_GONE_RECIPIENTS + 1), called  # newest first, the oldest left
    opt_ins = _web_push_opt_ins(store, section)
    assert [opt_ins[_endpoint_hash(b.endpoint)].opted_in for _, b in browsers] == [True] + [False] * (
        MAX_GONE_RECIPIENTS + 1
    )
    assert await _totals(api, section, cid) == (1, 1, 1)


async def test_a_hand_over_cut_before_its_call_is_sent_once_by_the_next_batch(
    api: httpx.AsyncClient, store: Store, section: SectionKeys, settings: Settings, fresh_provider: ProviderServer
) -> None:
    """The batch ends between the hand-over and its call (the shard paused, the worker died): the
    send waits as a retry after a definite answer, so the next batch sends it once, to the older
    subscription, not flagged a possible duplicate, and the run counts one sent recipient."""
    await _web_push(api, section)
    uid, browsers = await _subscribed(api, section, fresh_provider, Reply(201, ""), Reply(410, GONE))
    (older, browser), (newest, _) = browsers
    spec = batch_campaign("scheduled", channels=("web_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    spec["variations"][0]["steps"] = [step("Only", channels=("web_push",), payload={"title": "Sale"})]
    cid = await create_campaign(api, section, spec)
    run = BroadcastRun(
        id="run_" + secrets.token_hex(8), section_id=section.id, campaign_id=cid, campaign_version=1,
        reason="test", state="sending", created_at=datetime.now(UTC),
    )  # fmt: skip
    with store.session() as s:
        s.add(run)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        acts = BroadcastActivities(
            store, registry, SecretBox(settings.secret_keys), CapPolicy(5, timedelta(hours=24)), timedelta(hours=24)
        )
        inp = BroadcastInput(run_id=run.id, section_id=section.id, campaign_id=cid, shards=1)
        assert await asyncio.to_thread(ActivityEnvironment().run, acts.plan_audience, inp) == 1
        req = BatchRequest(run_id=run.id, shard=0, shards=1, as_of=datetime.now(UTC), limit=200)
        batch, _, _ = acts._load_batch(req)
        ready = acts._prepare(req, batch, uid)
        assert isinstance(ready, Ready), ready
        try:
            await registry.send(ready.kind, ready.message)
            raise AssertionError("the newest subscription is gone")
        except ProviderError as err:
            assert err.recipient_gone, err
            assert acts._gone(req, uid, ready, err, True) == HANDED_OVER  # then the batch ends
        with store.session() as s:
            waiting = s.get(Send, ready.send_key)
            assert waiting is not None and (waiting.status, waiting.possible_duplicate) == ("retrying", False)
        retry = req.model_copy(update={"as_of": datetime.now(UTC)})
        result = await ActivityEnvironment().run(acts.deliver_batch, retry)
    assert (result.sent, result.failed, result.run_sent, result.run_failed) == (1, 0, 1, 0), result
    assert len(fresh_provider.to(newest)) == 1  # only the first batch's call: the gone one is opted out
    (delivered,) = fresh_provider.to(older)
    assert browser.decrypt(delivered.body)["title"] == "Sale"
    with store.session() as s:
        send = s.get(Send, ready.send_key)
        assert send is not None
        assert (send.status, send.possible_duplicate, send.attempts, send.message_enc) == ("accepted", False, 2, None)
        rec = s.get(BroadcastRecipient, (run.id, uid))
        assert rec is not None and (rec.status, rec.channel) == ("sent", "web_push"), rec
    assert await _totals(api, section, cid) == (1, 0, 0)
