"""A recipient whose call was cut by a worker's death, then opted out before the batch's retry, is skipped.

docs/audience.md: a recipient skipped before its retry counts `skipped` while the call it began
counts in `failed_sends` (and `possibly_delivered` if its outcome is unknown). A trial killed a
worker mid-call (the send left in flight), opted the recipient out, and the retried batch ended
the recipient `failed` ("email: an earlier attempt may have been delivered: no fallback"): the
check for an open send on a channel not chosen ran with no channel chosen at all. And the send's
reason said the phrase twice. Real store and local provider server; the activities are driven
directly, the worker's death is a preparation whose call never ends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment

from activities.broadcast_batch import Ready
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.broadcast_tables import BroadcastRecipient
from store.engine import Store
from store.sends import MAYBE_DELIVERED
from store.tables import CapReservation, OptIn, Send
from tests.audience.feed_helpers import batch_campaign, driven_run, planned_batch, provider_push, push_user
from tests.audience.test_broadcast_exactly_once import _activities
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Reply


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def test_a_cut_call_then_an_opt_out_skips_the_recipient_and_closes_the_send_once(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer
) -> None:
    path = await provider_push(api, section, fresh_provider)
    fresh_provider.handler(path, lambda _req: Reply(200, {"ok": True}))
    uid = await push_user(api, section, store)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    run = driven_run(store, section.id, cid)
    async with outbound_session(limit=50, timeout=10, connect=5) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        acts = _activities(store, registry, SecretBox(settings.secret_keys), settings)
        req = await planned_batch(acts, run, 1)
        # The first attempt: prepared (its send in flight), then its worker died mid-call.
        batch, _rate, due = await asyncio.to_thread(acts._load_batch, req)
        assert due == [uid]
        assert isinstance(await asyncio.to_thread(acts._prepare, req, batch, uid), Ready)
        with store.session() as s:  # the user opts out before the batch is retried
            for row in s.exec(select(OptIn).where(col(OptIn.section_id) == section.id)).all():
                row.opted_in = False
                s.add(row)
        result = await ActivityEnvironment().run(acts.deliver_batch, req)
    assert fresh_provider.to(path) == [], "the retry made no call"
    assert (result.sent, result.skipped, result.failed) == (0, 1, 0), result
    with store.session() as s:
        rec = s.exec(select(BroadcastRecipient).where(col(BroadcastRecipient.run_id) == run.id)).one()
        [send] = s.exec(select(Send).where(col(Send.campaign_id) == cid)).all()
        slot = s.get(CapReservation, send.key)
    assert (rec.status, rec.reason) == ("skipped", "not_opted_in"), rec
    # The call it began: failed, flagged (it may have been delivered), its slot kept, said once.
    assert (send.status, send.possible_duplicate, send.message_enc) == ("failed", True, None), send
    answer = send.provider_response or ""
    assert answer.startswith("not retried: not_opted_in") and answer.count(MAYBE_DELIVERED) == 1, answer
    assert slot is not None and not slot.released
