"""A batched run's provider answers with a NUL byte are recorded once (providers/base.py::storable).

Before, PostgreSQL refused the group of acceptances (`activities/broadcast_plain.py`) or a refusal's
record, the batch failed after its calls, and its retry sent every recipient the message again.
Real store and local provider server; the run's activities are driven directly (`driven_run`)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment

from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRecipient
from store.engine import Store
from tests.audience.feed_helpers import (
    batch_campaign,
    campaign_sends,
    driven_run,
    planned_batch,
    provider_push,
    push_user,
)
from tests.audience.test_broadcast_exactly_once import _activities
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Reply

RECIPIENTS = 3


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _storable(text: str | None) -> bool:
    return text is not None and "\0" not in text


async def _run_answered(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, provider: ProviderServer,
    reply: Reply,
) -> tuple[str, str, int, int]:  # fmt: skip
    """A scheduled app push campaign over RECIPIENTS users, its one batch sent to a sink answering
    `reply`: (campaign, run, sent, failed)."""
    path = await provider_push(api, section, provider)
    provider.default(path, reply)
    for _ in range(RECIPIENTS):
        await push_user(api, section, store)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    run = driven_run(store, section.id, cid)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        acts = _activities(store, registry, SecretBox(settings.secret_keys), settings)
        req = await planned_batch(acts, run, RECIPIENTS)
        result = await ActivityEnvironment().run(acts.deliver_batch, req)
    assert len(provider.to(path)) == RECIPIENTS  # one call each: the batch did not fail after its calls
    return cid, run.id, result.sent, result.failed


def _recipients(store: Store, run_id: str) -> list[BroadcastRecipient]:
    with store.session() as s:
        return list(s.exec(select(BroadcastRecipient).where(col(BroadcastRecipient.run_id) == run_id)).all())


async def test_answers_with_a_nul_are_accepted_once_per_recipient(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    cid, run_id, sent, failed = await _run_answered(api, section, store, settings, fresh_provider,
                                                    Reply(201, "queued\0id"))  # fmt: skip
    assert (sent, failed) == (RECIPIENTS, 0)
    sends = await campaign_sends(store, cid)
    assert {(x.status, x.attempts, x.provider_response) for x in sends} == {("accepted", 1, "queued\ufffdid")}
    assert len(sends) == RECIPIENTS
    assert {(r.status, r.provider_response) for r in _recipients(store, run_id)} == {("sent", "queued\ufffdid")}


async def test_refusals_with_a_nul_fail_once_per_recipient_with_the_reason(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    cid, run_id, sent, failed = await _run_answered(api, section, store, settings, fresh_provider,
                                                    Reply(400, "invalid\0token"))  # fmt: skip
    assert (sent, failed) == (0, RECIPIENTS)
    sends = await campaign_sends(store, cid)
    assert {(x.status, x.attempts, x.provider_response) for x in sends} == {
        ("failed", 1, "rejected (400): invalid\ufffdtoken")
    }
    recipients = _recipients(store, run_id)
    assert {r.status for r in recipients} == {"failed"} and all(_storable(r.reason) for r in recipients)
