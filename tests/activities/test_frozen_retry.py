"""A retry sends what the first attempt sent: one send's content is fixed at its first attempt.

Every attempt of a send carries the same idempotency key. Composed again, a retry carried other
content whenever the user's cart (or the catalog, or the address) had changed since the first
attempt: a vendor checking the body against the key (Stripe-style) refused it as a conflict, a
vendor that de-duplicates delivered the first content while Rejoin recorded the second. The first
attempt now keeps its message, encrypted, with the send (`activities/frozen_message.py`); a
retry sends it again if the recipient is still opted in at the same address, and the kept
message is dropped once the send is final.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from activities.delivery import RECIPIENT_CHANGED
from activities.frozen_message import FrozenMessage
from store.engine import Store
from store.tables import Send
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    app_state,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    journey_result,
    opt_in,
    reachable_user,
    step,
    sync_cart,
)
from tests.provider_server import ProviderServer, Received, Reply

# The whole cart as data (a list of product records) and one field of it: both change with the cart.
PAYLOAD = {"to": "${User identifier}", "first": "${Items in cart|name|item1}", "items": "${Items in cart}"}
CUT = Reply(200, {"id": "m1"}, truncate=True)  # processed, then the connection reset mid-answer
REUSED = "Keys for idempotent requests can only be used with the same parameters they were first used with"
CONFLICT = Reply(422, {"error": {"type": "idempotency_error", "message": REUSED}})


class FirstAttemptHeld:
    """Holds the provider's answer to the first request on `path` (the provider's loop waits)
    until the test has changed the world between the first attempt and its retry."""

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
def held(fresh_provider: ProviderServer) -> Iterator[FirstAttemptHeld]:
    hold = FirstAttemptHeld("/frozen/" + secrets.token_hex(4))
    fresh_provider.on_request = hold
    try:
        yield hold
    finally:
        hold.go.set()
        fresh_provider.on_request = None


def stripe_like(first: Reply) -> Callable[[Received], Reply]:
    """A vendor that keeps the body of each Idempotency-Key it sees first (answering `first`), and
    refuses a later request under that key with another body as a conflict (422), as Stripe does."""
    bodies: dict[str, bytes] = {}

    def answer(req: Received) -> Reply:
        key = req.headers.get("idempotency-key", "")
        if key not in bodies:
            bodies[key] = req.body
            return first
        return Reply(200, {"id": "m1"}) if bodies[key] == req.body else CONFLICT

    return answer


async def _cart_journey(
    api: httpx.AsyncClient, sec: SectionKeys, provider: ProviderServer, path: str
) -> tuple[str, str, str]:
    """A one-step cart campaign to a custom HTTP vendor at `path`, and a user whose cart starts
    it: (campaign id, dyid, user id)."""
    await add_integration(api, sec, kind="custom_http", config={"url": provider.url(path)})
    products = [{"sku": "sku-1", "name": "Red dress", "price": 10.0},
                {"sku": "sku-2", "name": "Blue hat", "price": 99.0}]  # fmt: skip
    assert (await api.put("/api/v1/products", json=products, headers=sec.mgmt)).status_code < 300
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("Nudge", payload=PAYLOAD)]))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-1"))
    return cid, dyid, uid


def _send(store: Store, journey_id: str) -> Send:
    with store.session() as s:
        return s.exec(select(Send).where(Send.journey_id == journey_id)).one()


def _in_flight(store: Store, sec: SectionKeys) -> Send:
    """The section's one send, in flight while its first attempt is held."""
    with store.session() as s:
        return s.exec(select(Send).where(Send.section_id == sec.id, Send.status == "in_flight")).one()


async def _opt_out(api: httpx.AsyncClient, sec: SectionKeys, email: str) -> None:
    r = await api.post("/v2/userdata/channels/email/opt-out",
                       json={"identifier": {"type": "email", "value": email}}, headers=sec.ing)  # fmt: skip
    assert r.status_code == 200, r.text


async def test_a_retry_after_a_503_sends_the_first_body_though_the_cart_changed(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer, held: FirstAttemptHeld,
) -> None:  # fmt: skip
    """The vendor answers the first attempt 503 after the user's cart changed: the retry carries
    the same key and the same bytes (before: the new cart, under the same key). While the send
    waits, its message is kept encrypted; once accepted it is dropped."""
    fresh_provider.script(held.path, Reply(503, "busy"))
    cid, dyid, uid = await _cart_journey(api, section, fresh_provider, held.path)
    await held.wait_seen()
    await collect(api, section, dyid, sync_cart([("sku-2", 99.0)]))
    kept = _in_flight(store, section)
    assert kept.message_enc is not None, "kept from the first attempt, while it waits"
    assert email_for(dyid) not in kept.message_enc and "Red dress" not in kept.message_enc, "encrypted"
    frozen = FrozenMessage.open(app_state(api).box, kept.message_enc)
    held.go.set()
    result = await journey_result(env.client, section, cid, uid)
    first, retry = fresh_provider.to(held.path)
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"] == kept.key
    assert retry.body == first.body, (first.body, retry.body)
    assert first.json()["first"] == "Red dress" and first.json() == frozen.payload
    assert frozen.recipient == email_for(dyid) and frozen.step_name == "Nudge"
    assert result.sent == 1, result
    send = _send(store, result.journey_id)
    assert (send.status, send.attempts, send.message_enc) == ("accepted", 2, None)


@pytest.mark.parametrize("first", [Reply(503, "busy"), CUT], ids=["503", "lost-answer"])
async def test_a_vendor_checking_the_body_against_the_key_accepts_the_retry(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer, held: FirstAttemptHeld, first: Reply,
) -> None:  # fmt: skip
    """Stripe-style idempotency: a key's later request must have the first one's body. The cart
    changes between the attempts. Before: the retry's new body was refused 422 as a conflict and
    the send failed (after a lost answer: failed although the first attempt was delivered)."""
    fresh_provider.handler(held.path, stripe_like(first))
    cid, dyid, uid = await _cart_journey(api, section, fresh_provider, held.path)
    await held.wait_seen()
    await collect(api, section, dyid, sync_cart([("sku-2", 99.0)]))
    held.go.set()
    result = await journey_result(env.client, section, cid, uid)
    assert len(fresh_provider.to(held.path)) == 2
    assert result.sent == 1 and [d.outcome for d in result.decisions] == ["sent"], result
    send = _send(store, result.journey_id)
    assert (send.status, send.provider_status, send.message_enc) == ("accepted", 200, None), send
    assert send.possible_duplicate == (first is CUT)  # the lost answer's retry stays flagged, as before


async def test_an_opt_out_between_the_attempts_stops_the_retry(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer, held: FirstAttemptHeld,
) -> None:  # fmt: skip
    """The kept message is not sent to a recipient who opted out after the first attempt."""
    fresh_provider.script(held.path, Reply(503, "busy"))
    cid, dyid, uid = await _cart_journey(api, section, fresh_provider, held.path)
    await held.wait_seen()
    await _opt_out(api, section, email_for(dyid))
    held.go.set()
    result = await journey_result(env.client, section, cid, uid)
    assert len(fresh_provider.to(held.path)) == 1, "no second call"
    decision = result.decisions[0]  # then the fallback finds no other channel (as before)
    assert (decision.outcome, decision.reason) == ("failed", "recipient no longer opted in"), result
    send = _send(store, result.journey_id)
    assert (send.status, send.attempts, send.message_enc) == ("failed", 2, None), send


async def test_a_new_address_between_the_attempts_fails_the_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer, held: FirstAttemptHeld,
) -> None:  # fmt: skip
    """The user's email changed between the attempts (the new one opted in, the old one out): the
    content made for the old address is not sent to the new one, and no new content goes under
    the old key (before: a second call, new content to the new address under the same key)."""
    fresh_provider.script(held.path, Reply(503, "busy"))
    cid, dyid, uid = await _cart_journey(api, section, fresh_provider, held.path)
    await held.wait_seen()
    new = f"new-{secrets.token_hex(4)}@example.com"
    await opt_in(api, section, "email", "email", new)
    # An identification naming no CUID: its email sticks to the user the device belongs to.
    await collect(api, section, dyid, {"name": "Newsletter Subscription", "properties": {
        "dyType": "newsletter-subscription-v1",
        "secondaryIdentifiers": [{"type": "email", "value": new}]}})  # fmt: skip
    await _opt_out(api, section, email_for(dyid))
    held.go.set()
    result = await journey_result(env.client, section, cid, uid)
    assert len(fresh_provider.to(held.path)) == 1, "no second call"
    assert [(d.outcome, d.reason) for d in result.decisions] == [("failed", RECIPIENT_CHANGED)], result
    send = _send(store, result.journey_id)
    assert (send.status, send.message_enc) == ("failed", None), send
    assert new not in (send.provider_response or "") and email_for(dyid) not in (send.provider_response or "")


async def test_a_send_begun_by_older_code_is_composed_again_as_before(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer, held: FirstAttemptHeld,
) -> None:  # fmt: skip
    """A send row written before messages were kept (no `message_enc`) is composed again by its
    retry, as it always was: there is nothing else to send."""
    fresh_provider.script(held.path, Reply(503, "busy"))
    cid, dyid, uid = await _cart_journey(api, section, fresh_provider, held.path)
    await held.wait_seen()
    await collect(api, section, dyid, sync_cart([("sku-2", 99.0)]))
    with store.session() as s:
        row = s.get(Send, _in_flight(store, section).key)
        assert row is not None
        row.message_enc = None
        s.add(row)
    held.go.set()
    result = await journey_result(env.client, section, cid, uid)
    first, retry = fresh_provider.to(held.path)
    assert (first.json()["first"], retry.json()["first"]) == ("Red dress", "Blue hat")
    assert result.sent == 1, result
    assert _send(store, result.journey_id).message_enc is None


async def test_an_erasure_drops_the_kept_messages_of_the_persons_sends(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """The message kept for an unfinished send's retries names the person: their erasure drops it."""
    await add_integration(api, section)
    dyid, uid = await reachable_user(api, section)
    key = f"jny_{secrets.token_hex(6)}:0:email"
    now = datetime.now(UTC)
    sealed = FrozenMessage(email_for(dyid), {"to": email_for(dyid)}, "Cart", "Nudge", None).seal(app_state(api).box)
    with store.session() as s:
        s.add(Send(key=key, journey_id=key.split(":")[0], section_id=section.id, campaign_id="cmp", variation_id="a",
                   step_index=0, channel="email", integration_id="int", user_id=uid, status="retrying", attempts=1,
                   created_at=now, updated_at=now, message_enc=sealed))  # fmt: skip
    r = await api.delete(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.status_code == 200, r.text
    with store.session() as s:
        send = s.get(Send, key)
        assert send is not None and send.message_enc is None and send.status == "retrying"
