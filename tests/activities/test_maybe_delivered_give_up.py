"""A send given up after an attempt whose outcome is unknown may have been delivered.

The vendor may have processed an attempt whose answer was lost (a reset mid-answer, a timeout, a
worker that died mid-call). When the send then ends without an acceptance (the user exits while it
waits to retry, the delivery budget runs out, an error that is not retried), it is recorded
`failed` but flagged `possible_duplicate`, keeps its cap slot and is followed by no other channel:
the rule of a refusal after such an attempt (`Delivery._fail_in`, docs/channels.md, "Retries").
A send whose every attempt was answered with a failure still frees its slot and falls back.
Either way it is counted once, as a failed send request, by the counters as by the raw report.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from activities.journey import JourneyActivities
from api.journeys import start_or_retrigger, trigger_input
from domain.caps import CapPolicy
from domain.reports import aggregate
from settings import Settings
from store import reports as q
from store.engine import Store
from store.tables import Campaign, CapReservation, Decision, Send
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    app_state,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    outbox,
    purchase,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from workflows.ids import journey_workflow_id
from workflows.models import GiveUpRequest, JourneyResult, TriggerSignal

WINDOW = timedelta(days=7)
CUT = Reply(200, {"id": "m1"}, truncate=True)  # processed, then the connection reset mid-answer


def _send_of(store: Store, journey_id: str, channel: str = "email") -> Send:
    with store.session() as s:
        return s.exec(select(Send).where(Send.journey_id == journey_id, Send.channel == channel)).one()


def _slot_released(store: Store, key: str) -> bool:
    with store.session() as s:
        slot = s.get(CapReservation, key)
        assert slot is not None
        return slot.released


async def _deliveries(api: httpx.AsyncClient, sec: SectionKeys, cid: str) -> dict[str, Any]:
    # The sends are stamped with the journey's (skipped-ahead) time: ask up to a day ahead.
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await api.get(f"/api/v1/campaigns/{cid}/deliveries", params={"to": until}, headers=sec.mgmt)
    assert r.status_code == 200, r.text
    channels: dict[str, Any] = r.json()["channels"]
    return channels


def _report_counts(store: Store, sec: SectionKeys, cid: str) -> tuple[int, int]:
    """(send requests, failed sends) from the counters, checked equal to the raw recompute."""
    now = datetime.now(UTC)
    span = (now - timedelta(days=30), now + timedelta(days=30))  # whole hours: the counters answer
    with store.session() as s:
        fast = aggregate(q.load(s, sec.id, cid, *span, WINDOW), WINDOW)
        raw = aggregate(q.load_raw(s, sec.id, cid, *span), WINDOW)
    counted, recomputed = (
        {v: (int(b.counts["send_requests"]), int(b.counts["failed_sends"])) for v, b in agg.variations.items()}
        for agg in (fast, raw)
    )
    assert counted == recomputed, (counted, recomputed)
    return counted["a"]


@pytest.mark.parametrize("attempts", [1, 2], ids=["exit-after-the-lost-answer", "exit-after-a-later-500"])
async def test_an_exit_while_retrying_after_a_lost_answer_keeps_the_send_possibly_delivered(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer, attempts: int,
) -> None:  # fmt: skip
    """The vendor processes the first attempt and resets the connection mid-answer; every later
    attempt gets a 500. A purchase arrives while the send waits to retry (after the first attempt,
    or after a second one got the 500). Before: `failed`, unflagged after one attempt, cap slot
    released, counted a definite failure; the next send to the user could exceed the cap."""
    path = "/esp/" + secrets.token_hex(4)
    fresh_provider.script(path, CUT)
    fresh_provider.default(path, Reply(500, {"error": "key seen"}))
    seen = threading.Semaphore(0)
    fresh_provider.on_request = lambda r: seen.release() if r.path == path else None
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url(path)})
    cid = await create_campaign(api, section, cart_campaign(wait="PT5M", steps=[step("Only")]))
    dyid, uid = await reachable_user(api, section)
    loop = asyncio.get_running_loop()
    try:
        await collect(api, section, dyid, add_to_cart("sku-1"))
        for _ in range(attempts):
            assert await loop.run_in_executor(None, seen.acquire, True, 30)
        # At once: the retry follows ~1 s later (the environment skips the back-off's time)
        await collect(api, section, dyid, purchase([("sku-1", 10.0)]))
        result = await journey_result(env.client, section, cid, uid)
    finally:
        fresh_provider.on_request = None
    assert result.status == "exited" and result.exit_reason == "purchased", result
    assert [(d.outcome, d.step_index) for d in result.decisions] == [("failed", 0), ("exited", 0)], result
    assert "may have been delivered" in (result.decisions[0].reason or ""), result
    assert result.decisions[0].possible_duplicate, result  # the journey's own record says so too
    send = _send_of(store, result.journey_id)
    assert len(fresh_provider.to(path)) == send.attempts == attempts
    assert (send.status, send.possible_duplicate) == ("failed", True), send
    assert "cancelled: the user exited (purchased)" in (send.provider_response or "")
    assert not _slot_released(store, send.key), "the message may have reached the user: its slot stays taken"
    with store.session() as s:
        trace = s.get(Decision, f"{send.key}:outcome")
        assert trace is not None and trace.detail.get("possible_duplicate") is True, trace
    assert await _deliveries(api, section, cid) == {"email": {"failed": 1, "possible_duplicates": 1}}
    assert _report_counts(store, section, cid) == (1, 1)


async def _journey_with_budget(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, sec: SectionKeys, provider: ProviderServer,
    budget: timedelta, *replies: Reply, then: Reply, kind: str = "custom_http",
) -> tuple[str, JourneyResult]:  # fmt: skip
    """A one-step journey, email first then SMS (the built-in outbox: a fallback is seen there),
    whose step's delivery budget is `budget`; the email provider answers `replies`, then `then`.
    `kind`: `custom_http` (repeats flagged) or `klaviyo` (the vendor de-duplicates on the key)."""
    if kind == "klaviyo":
        path, config = "/api/events", {"api_key": "pk_test", "metric_name": "Rejoin Cart", "base_url": provider.url()}
    else:
        path = "/esp/" + secrets.token_hex(4)
        config = {"url": provider.url(path)}
    provider.script(path, *replies)
    provider.default(path, then)
    await add_integration(api, sec, kind=kind, config=config)
    await add_integration(api, sec, "sms")
    nudge = step("Nudge", channels=("email", "sms"))
    spec = cart_campaign(wait="PT1H", channel_priority=["email", "sms"], steps=[nudge])
    cid = await create_campaign(api, sec, spec)
    _, uid = await reachable_user(api, sec, phone="+15551230000")
    with store.session() as s:
        version = s.get(Campaign, cid).version  # type: ignore[union-attr]
    settings: Settings = app_state(api).settings
    inp = trigger_input(sec.id, cid, version, uid, timedelta(hours=1), False, settings.delivery_timeout)
    inp.delivery_budget = budget
    await start_or_retrigger(env.client, settings.task_queue, journey_workflow_id(sec.id, cid, uid), inp,
                             TriggerSignal(event_id="evt_" + secrets.token_hex(4)))  # fmt: skip
    return cid, await journey_result(env.client, sec, cid, uid, timeout=90)


async def test_a_budget_spent_after_a_lost_answer_falls_back_to_no_other_channel(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """The first email attempt is processed but its answer lost; every retry gets a 503 until the
    delivery budget runs out. Before: the step fell back to SMS (the user got both) and the email's
    slot was freed."""
    budget = timedelta(minutes=5)
    cid, result = await _journey_with_budget(api, env, store, section, fresh_provider, budget, CUT, then=Reply(503))
    assert await outbox(api, section) == [], "no SMS: the email may well have arrived"
    assert result.sent == 0 and [d.outcome for d in result.decisions] == ["failed"], result
    reason = result.decisions[0].reason or ""
    assert result.decisions[0].possible_duplicate, result
    assert "gave up" in reason and "may have been delivered" in reason, reason
    send = _send_of(store, result.journey_id)
    assert (send.status, send.possible_duplicate) == ("failed", True) and send.attempts >= 2, send
    assert not _slot_released(store, send.key)
    assert await _deliveries(api, section, cid) == {"email": {"failed": 1, "possible_duplicates": 1}}
    assert _report_counts(store, section, cid) == (1, 1)


async def test_a_vendor_de_duplicating_on_the_key_is_possibly_delivered_too_when_its_retries_are_refused(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """Klaviyo honours the key (unique_id): a repeat is not a duplicate there, but its 503s to the
    retries do not say whether it processed the attempt whose answer was lost. Before: that attempt
    was not flagged, so the give-up was a definite failure: the slot was freed and the SMS went too."""
    budget = timedelta(minutes=5)
    cut = Reply(202, {"id": "e1"}, truncate=True)  # processed, then the connection reset mid-answer
    cid, result = await _journey_with_budget(
        api, env, store, section, fresh_provider, budget, cut, then=Reply(503), kind="klaviyo"
    )
    assert await outbox(api, section) == [], "no SMS: the email may well have arrived"
    assert [d.outcome for d in result.decisions] == ["failed"] and result.decisions[0].possible_duplicate, result
    send = _send_of(store, result.journey_id)
    assert (send.status, send.possible_duplicate) == ("failed", True) and send.attempts >= 2, send
    assert not _slot_released(store, send.key)
    assert await _deliveries(api, section, cid) == {"email": {"failed": 1, "possible_duplicates": 1}}


async def test_a_vendor_de_duplicating_on_the_key_settles_a_lost_answer_by_accepting_the_retry(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """The retry under the same key is accepted: the vendor delivered the event once, so the send is
    accepted and not a possible duplicate (it would be for a vendor that does not honour keys)."""
    cut = Reply(202, {"id": "e1"}, truncate=True)  # processed, then the connection reset mid-answer
    cid, result = await _journey_with_budget(
        api, env, store, section, fresh_provider, timedelta(minutes=5), cut, then=Reply(202, ""), kind="klaviyo"
    )
    assert [d.outcome for d in result.decisions] == ["sent"] and not result.decisions[0].possible_duplicate, result
    send = _send_of(store, result.journey_id)
    assert (send.status, send.possible_duplicate, send.attempts) == ("accepted", False, 2), send
    assert await _deliveries(api, section, cid) == {"email": {"accepted": 1}}


async def test_a_budget_spent_on_definite_failures_still_frees_the_slot_and_falls_back(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """Every email attempt is answered 503 until the budget runs out: nothing can have been
    delivered, so the slot is freed and the step falls back to SMS, as before."""
    budget = timedelta(minutes=5)
    cid, result = await _journey_with_budget(api, env, store, section, fresh_provider, budget, then=Reply(503))
    assert len(await outbox(api, section)) == 1, "the SMS fallback went out"
    assert [(d.outcome, d.channel) for d in result.decisions] == [("failed", "email"), ("sent", "sms")], result
    assert "may have been delivered" not in (result.decisions[0].reason or "")
    assert not result.decisions[0].possible_duplicate, result
    email = _send_of(store, result.journey_id)
    assert (email.status, email.possible_duplicate) == ("failed", False) and email.attempts >= 2, email
    assert _slot_released(store, email.key)
    assert await _deliveries(api, section, cid) == {"email": {"failed": 1}, "sms": {"accepted": 1}}
    assert _report_counts(store, section, cid) == (2, 1)


# ------------------------------------------------------------------ the give-up step itself


def _given_up(store: Store, settings: Settings, status: str, *, flagged: bool = False) -> tuple[Any, Send, bool]:
    """`journey.give_up` of a send left `status` (no journey row: no trace, no counters), its
    DeliverResult, the send afterwards and whether its slot was released."""
    key = f"jny_{secrets.token_hex(6)}:0:email"
    at = datetime.now(UTC)
    with store.session() as s:
        s.add(Send(key=key, journey_id=key.split(":")[0], section_id="sec", campaign_id="cmp", variation_id="a",
                   step_index=0, channel="email", integration_id="int", user_id="usr_" + secrets.token_hex(4),
                   status=status, attempts=1, possible_duplicate=flagged, created_at=at, updated_at=at))  # fmt: skip
        s.add(CapReservation(key=key, section_id="sec", user_id="u", channel="email", campaign_id="cmp",
                             reserved_at=at, released=False))  # fmt: skip
    acts = JourneyActivities(store, CapPolicy(settings.global_cap_messages, settings.global_cap_window),
                             settings.priority_window)  # fmt: skip
    req = GiveUpRequest(journey_id=key.split(":")[0], send_key=key, step_index=0, channel="email", as_of=at,
                        reason="delivery gave up: timeout")  # fmt: skip
    result = acts.give_up(req)
    again = acts.give_up(req)  # a retried give-up records nothing more and says the same
    assert (again.fallback_allowed, again.possible_duplicate) == (result.fallback_allowed, result.possible_duplicate)
    with store.session() as s:
        send = s.get(Send, key)
        slot = s.get(CapReservation, key)
        assert send is not None and slot is not None
        return result, send, slot.released


@pytest.mark.parametrize(
    ("status", "flagged", "maybe"),
    [("in_flight", False, True), ("retrying", True, True), ("retrying", False, False), ("in_flight", True, True)],
    ids=["unknown-last-attempt", "unknown-earlier-attempt", "all-answered-failures", "both"],
)
def test_give_up_keeps_a_possibly_delivered_send_and_its_slot(
    store: Store, settings: Settings, status: str, flagged: bool, maybe: bool
) -> None:
    result, send, released = _given_up(store, settings, status, flagged=flagged)
    assert (result.status, result.fallback_allowed, result.possible_duplicate) == ("failed", not maybe, maybe)
    assert (send.status, send.possible_duplicate, released) == ("failed", maybe, not maybe)
    assert ("may have been delivered" in (send.provider_response or "")) == maybe
