"""Batched runs: a vendor that does not de-duplicate on the key gets an unknown outcome retried once.

As a journey's send (tests/reliability/test_unknown_outcome_twice.py): a recipient whose call timed
out was deferred and called again at every later batch for the 6 h retry budget, each call a message
the vendor may have delivered. Now its second unknown outcome ends it `failed`, flagged
`possible_duplicate`, its cap slot kept and no fallback, logged once at WARNING; a vendor that honours
the key is still retried until it answers. Real store and loopback vendor, the activities driven
batch by batch (each a later `as_of`, past the recipient's backoff), their calls timing out after 1 s.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.broadcast import BroadcastActivities
from domain.caps import CapPolicy
from domain.tracking import Signer
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRecipient, BroadcastRun
from store.engine import Store
from store.tables import CapReservation
from tests.audience.feed_helpers import batch_campaign, campaign_sends, driven_run, planned_batch
from tests.helpers import SectionKeys, add_integration, create_campaign, reachable_user
from tests.provider_server import ProviderServer, Reply
from workflows.feed_models import BatchRequest, BatchResult

SLOW = 1.6  # seconds the vendor takes: past the calls' 1 s timeout


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


@dataclass
class Driven:
    acts: BroadcastActivities
    req: BatchRequest

    async def batch(self, minutes_later: int) -> BatchResult:
        """The shard's next batch, `minutes_later` on the run's clock (past any backoff)."""
        req = self.req.model_copy(update={"as_of": datetime.now(UTC) + timedelta(minutes=minutes_later)})
        return await ActivityEnvironment().run(self.acts.deliver_batch, req)


@pytest.fixture
async def http() -> AsyncIterator[object]:
    async with outbound_session(limit=10, timeout=1, connect=1) as session:
        yield session


def _activities(store: Store, settings: Settings, http: object) -> BroadcastActivities:
    return BroadcastActivities(
        store, ProviderRegistry(store, http, allow_private_urls=True), SecretBox(settings.secret_keys),  # type: ignore[arg-type]
        CapPolicy(5, timedelta(hours=24)), timedelta(hours=24),
        signer=Signer(settings.secret_keys), public_url="http://rejoin.test",
    )  # fmt: skip


# A Change in User Attribute campaign: feed-driven campaigns may send SMS and e-mail (scheduled ones push
# only); driven here without its feed (`driven_run` lists the whole audience).
ATTRIBUTE_CHANGE = {"attribute": "loyalty", "old": [{"op": "eq", "value": "Bronze"}],
                    "new": [{"op": "eq", "value": "Silver"}]}  # fmt: skip
SID = "AC0123456789abcdef"
TWILIO_PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"
PHONE = "+15551230000"


async def _run(api: httpx.AsyncClient, section: SectionKeys, store: Store, acts: BroadcastActivities,
               channels: tuple[str, ...]) -> tuple[str, Driven]:  # fmt: skip
    spec = batch_campaign("user_attribute_change", channels=channels, attribute_change=ATTRIBUTE_CHANGE)
    message = {"payload": {"body": "Silver now: 10% off", "subject": "Silver"}}  # an SMS needs its text
    spec["variations"][0]["steps"][0]["messages"] = dict.fromkeys(channels, message)
    cid = await create_campaign(api, section, spec)
    run = driven_run(store, section.id, cid)
    return cid, Driven(acts, await planned_batch(acts, run, 1))


def _warnings(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "activities.provider_retry" and key in r.getMessage()
    ]  # fmt: skip


async def test_a_recipient_whose_outcome_is_unknown_twice_is_not_called_a_third_time(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer,
    http: object, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Twilio (no idempotency key) processes the SMS but answers after the timeout; e-mail (the outbox)
    comes after SMS. Before: deferred again at the second batch, and at every batch after it."""
    config = {"account_sid": SID, "auth_token": "tw-secret-9", "sender": "Shop", "base_url": fresh_provider.url()}
    await add_integration(api, section, "sms", kind="twilio", config=config)
    await add_integration(api, section, "email")  # the outbox: a fallback would show there
    _, uid = await reachable_user(api, section, phone=PHONE)
    fresh_provider.default(TWILIO_PATH, Reply(201, {"sid": "SM0123456789abcdef"}, delay=SLOW))
    cid, driven = await _run(api, section, store, _activities(store, settings, http), ("sms", "email"))
    first = await driven.batch(0)
    assert (first.deferred, first.failed) == (1, 0), first
    with caplog.at_level(logging.INFO):
        second = await driven.batch(1)
    assert (second.deferred, second.failed, second.run_failed) == (0, 1, 1), second
    third = await driven.batch(2)
    assert third.processed == 0, third
    assert len(fresh_provider.to(TWILIO_PATH)) == 2, "one retry after an unknown outcome, no more"
    [send] = await campaign_sends(store, cid)  # no e-mail send: no fallback
    assert (send.channel, send.status, send.possible_duplicate, send.attempts) == ("sms", "failed", True, 2)
    answer = send.provider_response or ""
    assert answer.startswith("outcome unknown twice (timeout") and "twilio does not de-duplicate" in answer, answer
    assert "may have been delivered" in answer, answer
    with store.session() as s:
        rec = s.get(BroadcastRecipient, (driven.req.run_id, uid))
        assert rec is not None and (rec.status, rec.channel) == ("failed", "sms"), rec
        assert (rec.reason or "").startswith("outcome unknown twice"), rec.reason
        slot = s.get(CapReservation, send.key)
        assert slot is not None and not slot.released, "it may have reached the user: its cap slot stays taken"
        run = s.get(BroadcastRun, driven.req.run_id)
        assert run is not None and (run.sent, run.failed) == (0, 1)
    lines = _warnings(caplog, send.key)
    assert len(lines) == 1 and "(timeout)" in lines[0] and "outcome unknown twice" in lines[0], lines
    assert not any(PHONE[1:] in r.getMessage() for r in caplog.records)


async def test_a_vendor_that_de_duplicates_is_retried_until_it_answers(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer,
    http: object,
) -> None:  # fmt: skip
    """Klaviyo (de-duplicates on `unique_id`): two unknown outcomes are retried as before, and the third
    call's acceptance settles the send."""
    config = {"api_key": "pk_test", "metric_name": "Rejoin Cart", "base_url": fresh_provider.url()}
    await add_integration(api, section, "email", kind="klaviyo", config=config)
    await reachable_user(api, section)
    slow = Reply(202, "", delay=SLOW)
    fresh_provider.script("/api/events", slow, slow)
    fresh_provider.default("/api/events", Reply(202, ""))
    cid, driven = await _run(api, section, store, _activities(store, settings, http), ("email",))
    assert [(r.deferred, r.sent) for r in [await driven.batch(m) for m in (0, 1, 2)]] == [(1, 0), (1, 0), (0, 1)]
    assert len(fresh_provider.to("/api/events")) == 3
    [send] = await campaign_sends(store, cid)
    assert (send.status, send.possible_duplicate, send.attempts) == ("accepted", False, 3), send
