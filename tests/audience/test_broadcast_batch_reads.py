"""A batch reads what cannot change meaningfully during it once, not once per recipient: the run's
row, the section's cap setting and its integrations (activities/broadcast.py `_Batch`). Each was a
statement in every recipient's transaction (benchmark 3's fan-out: worker CPU per message). Real
store and local provider server; the activities are driven directly."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from temporalio.testing import ActivityEnvironment

from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.engine import Store
from tests.audience.feed_helpers import planned_batch
from tests.audience.test_broadcast_exactly_once import _activities, _push_run
from tests.helpers import SectionKeys
from tests.provider_server import ProviderServer

RECIPIENTS = 6
READ_OF = re.compile(r"^\s*SELECT\b.*?\bFROM\s+\"?(\w+)", re.IGNORECASE | re.DOTALL)


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


@contextmanager
def reads_by_table() -> Iterator[Counter[str]]:
    """The SELECTs run meanwhile (on any engine: the store's may be an option engine), by the table
    read first. Nothing else of this process talks to the store while the batch runs."""
    seen: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        found = READ_OF.match(statement)
        if found:
            seen[found.group(1).lower()] += 1

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


async def test_a_batch_reads_the_run_section_and_integrations_once_not_per_recipient(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    cid, run, people = await _push_run(api, section, store, fresh_provider, RECIPIENTS)
    box = SecretBox(settings.secret_keys)
    async with outbound_session(limit=10, timeout=10, connect=5) as http:
        acts = _activities(store, ProviderRegistry(store, http, allow_private_urls=True), box, settings)
        req = await planned_batch(acts, run, RECIPIENTS)
        with reads_by_table() as reads:
            result = await ActivityEnvironment().run(acts.deliver_batch, req)
    assert (result.processed, result.sent) == (RECIPIENTS, RECIPIENTS), result
    assert len({r.headers["idempotency-key"] for r in fresh_provider.requests}) == RECIPIENTS
    # Before: one read of each per recipient (`_prepare`), besides the batch's own.
    assert reads["broadcastrun"] <= 2, reads  # `_load_batch` and `_remaining`
    assert reads["section"] <= 1, reads
    assert reads["integration"] <= 1, reads
