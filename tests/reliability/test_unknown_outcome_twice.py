"""A vendor that does not de-duplicate on our key gets an unknown outcome retried once, not for ever.

A trial pointed a Twilio integration at a vendor that answered every request correctly, but only
after 12 s (the read timeout was a fixed 10 s): the same SMS went out 9 times in 10 minutes, each
one processed by the vendor, the send left `in_flight` (extrapolated ~40 texts over the 6 h delivery
budget). A trickled answer and a connection cut after the answer began did the same. Now a second
unknown outcome of such a send ends it: `failed`, flagged `possible_duplicate`, its cap slot kept,
no fallback, its reason saying why; a vendor that honours the key is still retried until it answers;
an integration may wait longer for its vendor (`timeout_seconds`); a send that fails for good is
logged once at WARNING, the recipient's address masked. Real Temporal, store and loopback vendor.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from api.journeys import start_or_retrigger, trigger_input
from api.main import create_app
from settings import Settings
from store.engine import Store
from store.tables import Campaign, CapReservation, Send
from tests.helpers import (
    SectionKeys,
    add_integration,
    cart_campaign,
    create_campaign,
    journey_result,
    make_section,
    outbox,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from worker import build_worker
from workflows.ids import journey_workflow_id
from workflows.models import JourneyResult, TriggerSignal

SID = "AC0123456789abcdef"
TWILIO_PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"
PHONE = "+15551230000"
# Attempts time out after 2 s here, so a provider call after 1.6 s (`provider_call_timeouts`).
ATTEMPT = timedelta(seconds=2)
SLOW = 2.5  # seconds a slow vendor takes: past the read timeout
BUDGET = timedelta(minutes=5)  # of (skipped) retry time: before the fix, ~8 calls in it
ACCEPTED = {"sid": "SM0123456789abcdef", "status": "queued"}


async def _api_with_attempt(
    env: WorkflowEnvironment, settings: Settings, store: Store, attempt: timedelta
) -> AsyncIterator[httpx.AsyncClient]:
    """API + in-process worker on their own queue, with delivery attempts of `attempt`."""
    own = settings.model_copy(
        update={"task_queue": "rejoin-unknown-" + secrets.token_hex(4), "delivery_timeout": attempt}
    )
    app = create_app(own, store=store, temporal=env.client)
    async with build_worker(env.client, own, store) as w, w:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test", timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
async def slow_api(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _api_with_attempt(env, settings, store, ATTEMPT):
        yield client


@pytest.fixture(scope="module")
async def roomy_api(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """Attempts of 20 s: an integration may wait up to 16 s for its vendor."""
    async for client in _api_with_attempt(env, settings, store, timedelta(seconds=20)):
        yield client


def _queue(api: httpx.AsyncClient) -> str:
    app = api._transport.app  # type: ignore[attr-defined]
    return str(app.state.rejoin.settings.task_queue)


def _attempt(api: httpx.AsyncClient) -> timedelta:
    app = api._transport.app  # type: ignore[attr-defined]
    return app.state.rejoin.settings.delivery_timeout  # type: ignore[no-any-return]


async def _journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, sec: SectionKeys, channel: str,
    integration: dict[str, Any], budget: timedelta = BUDGET,
) -> tuple[str, JourneyResult]:  # fmt: skip
    """A one-step journey on `channel` first, then e-mail (the outbox: a fallback is seen there), whose
    delivery budget is `budget`; `integration`: the body adding the integration of `channel`."""
    await add_integration(api, sec, channel=channel, **integration)
    if channel != "email":
        await add_integration(api, sec, "email")
    channels = (channel, "email") if channel != "email" else ("email",)
    only = step("Only", channels=channels, payload={"body": "Your cart is waiting", "subject": "Cart"})
    cid = await create_campaign(api, sec, cart_campaign(wait="PT1H", channel_priority=list(channels), steps=[only]))
    _, uid = await reachable_user(api, sec, phone=PHONE if channel == "sms" else None)
    with store.session() as s:
        version = s.get(Campaign, cid).version  # type: ignore[union-attr]
    inp = trigger_input(sec.id, cid, version, uid, timedelta(hours=1), False, _attempt(api))
    inp.delivery_budget = budget
    await start_or_retrigger(env.client, _queue(api), journey_workflow_id(sec.id, cid, uid), inp,
                             TriggerSignal(event_id="evt_" + secrets.token_hex(4)))  # fmt: skip
    return cid, await journey_result(env.client, sec, cid, uid, timeout=90)


def _twilio(provider: ProviderServer, **extra: Any) -> dict[str, Any]:
    config = {"account_sid": SID, "auth_token": "tw-secret-9", "sender": "Shop", "base_url": provider.url()}
    return {"kind": "twilio", "config": config, **extra}


def _send(store: Store, journey_id: str, channel: str) -> Send:
    with store.session() as s:
        return s.exec(select(Send).where(Send.journey_id == journey_id, Send.channel == channel)).one()


def _slot_released(store: Store, key: str) -> bool:
    with store.session() as s:
        slot = s.get(CapReservation, key)
        assert slot is not None
        return slot.released


async def _deliveries(api: httpx.AsyncClient, sec: SectionKeys, cid: str) -> dict[str, Any]:
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await api.get(f"/api/v1/campaigns/{cid}/deliveries", params={"to": until}, headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dict(r.json()["channels"])


def _failure_lines(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "activities.provider_retry" and key in r.getMessage()
    ]  # fmt: skip


def _no_phone(lines: list[str]) -> None:
    assert not any(PHONE in line or PHONE[1:] in line for line in lines), lines


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Reply(201, ACCEPTED, delay=SLOW), id="answers-after-the-read-timeout"),
        pytest.param(Reply(201, ACCEPTED, trickle=0.5), id="trickles-its-answer"),
        pytest.param(Reply(201, ACCEPTED, truncate=True), id="cut-mid-answer"),
    ],
)
async def test_a_vendor_that_does_not_de_duplicate_gets_the_message_at_most_twice(
    slow_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer, fault: Reply,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Twilio processes every request but its answer never arrives whole. Before: called again and
    again for the whole budget (8 calls in 5 minutes here), the send left in flight or given up at
    the end. Now: the first unknown outcome is retried, the second ends the send for good."""
    fresh_provider.default(TWILIO_PATH, fault)
    sec = await make_section(slow_api)
    with caplog.at_level(logging.INFO):
        cid, result = await _journey(slow_api, env, store, sec, "sms", _twilio(fresh_provider))
    assert len(fresh_provider.to(TWILIO_PATH)) == 2, "one retry after an unknown outcome, no more"
    assert [(d.outcome, d.channel) for d in result.decisions] == [("failed", "sms")], result
    assert await outbox(slow_api, sec) == [], "no e-mail fallback: the SMS may well have arrived"
    decision = result.decisions[0]
    assert decision.possible_duplicate and (decision.reason or "").startswith("outcome unknown twice ("), decision
    send = _send(store, result.journey_id, "sms")
    assert (send.status, send.possible_duplicate, send.attempts) == ("failed", True, 2), send
    answer = send.provider_response or ""
    assert "outcome unknown twice (" in answer and "twilio does not de-duplicate" in answer, answer
    assert "check its log" in answer and "may have been delivered" in answer, answer
    assert not _slot_released(store, send.key), "it may have reached the user: its cap slot stays taken"
    assert await _deliveries(slow_api, sec, cid) == {"sms": {"failed": 1, "possible_duplicates": 1}}
    lines = _failure_lines(caplog, send.key)
    assert len(lines) == 1, lines
    assert "(timeout)" in lines[0] or "(connection error)" in lines[0], lines
    assert "outcome unknown twice" in lines[0], lines
    _no_phone([r.getMessage() for r in caplog.records])


async def test_a_vendor_that_de_duplicates_is_retried_until_it_answers(
    slow_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer
) -> None:
    """Klaviyo de-duplicates on `unique_id`: repeating is safe, so three unknown outcomes in a row are
    retried as before, and its acceptance of the fourth call settles the send (not a duplicate)."""
    slow = Reply(202, "", delay=SLOW)
    fresh_provider.script("/api/events", slow, slow, slow)
    fresh_provider.default("/api/events", Reply(202, ""))
    sec = await make_section(slow_api)
    config = {"api_key": "pk_test", "metric_name": "Rejoin Cart", "base_url": fresh_provider.url()}
    cid, result = await _journey(slow_api, env, store, sec, "email", {"kind": "klaviyo", "config": config})
    assert len(fresh_provider.to("/api/events")) == 4
    assert [(d.outcome, d.possible_duplicate) for d in result.decisions] == [("sent", False)], result
    send = _send(store, result.journey_id, "email")
    assert (send.status, send.possible_duplicate, send.attempts) == ("accepted", False, 4), send
    assert await _deliveries(slow_api, sec, cid) == {"email": {"accepted": 1}}


@pytest.mark.slow
async def test_an_integration_waits_its_own_timeout_for_a_slow_vendor(
    roomy_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer
) -> None:
    """The trial's vendor, answering after 11 s where calls time out after 10 s: with `timeout_seconds`
    14 its integration waits for the answer, one call, accepted. Before: no such setting (the field
    was ignored), every call timed out."""
    fresh_provider.default(TWILIO_PATH, Reply(201, ACCEPTED, delay=11.0))
    sec = await make_section(roomy_api)
    integration = _twilio(fresh_provider, timeout_seconds=14)
    cid, result = await _journey(roomy_api, env, store, sec, "sms", integration)
    assert len(fresh_provider.to(TWILIO_PATH)) == 1
    assert [(d.outcome, d.channel, d.possible_duplicate) for d in result.decisions] == [("sent", "sms", False)]
    send = _send(store, result.journey_id, "sms")
    assert (send.status, send.possible_duplicate, send.attempts) == ("accepted", False, 1), send
    assert send.provider_message_id == ACCEPTED["sid"]


async def test_a_refused_send_is_logged_once_at_warning_without_the_address(
    slow_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Twilio refuses the SMS, quoting the number: the send fails (the e-mail fallback goes) and one
    WARNING line says so, with the send key, the status and the reason, the number masked. Before:
    nothing was logged of a send that failed for good."""
    refusal = {"code": 21408, "message": f"Permission to send an SMS has not been enabled for {PHONE}"}
    fresh_provider.default(TWILIO_PATH, Reply(400, refusal))
    sec = await make_section(slow_api)
    with caplog.at_level(logging.INFO):
        _, result = await _journey(slow_api, env, store, sec, "sms", _twilio(fresh_provider))
    assert [(d.outcome, d.channel) for d in result.decisions] == [("failed", "sms"), ("sent", "email")], result
    send = _send(store, result.journey_id, "sms")
    lines = _failure_lines(caplog, send.key)
    assert len(lines) == 1 and "(400)" in lines[0] and "21408" in lines[0], lines
    assert "+15******000" in lines[0], lines
    _no_phone([r.getMessage() for r in caplog.records])
    assert _failure_lines(caplog, _send(store, result.journey_id, "email").key) == []


async def test_a_send_given_up_at_the_end_of_its_budget_is_logged_once(
    slow_api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A vendor down (503) for the whole delivery budget: the give-up is logged once at WARNING."""
    fresh_provider.default(TWILIO_PATH, Reply(503, {"code": 20500, "message": "down"}))
    sec = await make_section(slow_api)
    with caplog.at_level(logging.INFO):
        _, result = await _journey(slow_api, env, store, sec, "sms", _twilio(fresh_provider), timedelta(minutes=1))
    assert [d.outcome for d in result.decisions][0] == "failed", result
    send = _send(store, result.journey_id, "sms")
    lines = _failure_lines(caplog, send.key)
    assert len(lines) == 1 and "(503)" in lines[0] and "gave up" in lines[0], lines
