"""Probe, not part of the suite (the file name keeps pytest from collecting it): the CPU one
journey's store steps cost, with the activities called directly against a real store.

    REJOIN_TEST_DB=sqlite .venv/bin/pytest tests/perf_probe_journey.py -q -s
    PROBE_PROFILE=1 ...                 # + Python calls per journey (load-independent)
    PROBE_PROFILE=2 ...                 # + a cProfile listing
    PROBE_SQL=1 ...                     # + the statements of one journey
    PROBE_N=150 ...                     # journeys per round (default 60)

Per round: N fresh users are enrolled first, outside the timing (new journeys are enrolled by the
API in the ingestion transaction, patch `enroll-at-trigger`; the old `enroll` activity writes the
same rows), then the worker's step activity is timed for each (decide, deliver by custom HTTP to a
local server, the journey's end with the send), as benchmark 2 does per journey, alternating test
and real users (real ones also write the report counters). Delivery's thread hops run inline, so
the profile sees them.
docs/performance.md ("Worker CPU per journey") has the figures.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import event

from activities.delivery import Delivery
from activities.journey import JourneyActivities
from activities.journey_step import JourneySteps
from domain.caps import CapPolicy
from domain.tracking import Signer
from providers.http import outbound_session
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys, add_integration, cart_campaign, create_campaign, reachable_user, step
from tests.provider_server import ProviderServer
from workflows.models import EnrollRequest, StepRequest

N = int(os.environ.get("PROBE_N", "60"))
T = TypeVar("T")


async def _inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def _ids(sec: str, cid: str, uid: str) -> dict[str, Any]:
    return {"journey_id": str(uuid.uuid4()), "section_id": sec, "campaign_id": cid, "campaign_version": 1, "user_id": uid}


def _enroll(journey: JourneyActivities, ids: dict[str, Any], is_test: bool) -> None:
    journey.enroll(EnrollRequest(**ids, workflow_id=f"wf-{ids['journey_id']}", is_test=is_test, as_of=datetime.now(UTC)))


async def _step(journey: JourneyActivities, delivery: Delivery, ids: dict[str, Any]) -> None:
    """One step as new journeys run it (patch step-in-one-activity): its send ends the journey."""
    request = StepRequest(**ids, step_index=0, as_of=datetime.now(UTC), last_step=True)
    outcome = await JourneySteps(journey, delivery).send_step(request)
    assert outcome.delivery is not None and outcome.delivery.status == "accepted" and outcome.journey_ended, outcome


async def test_probe(api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, store: Store,
                     settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(asyncio, "to_thread", _inline)
    await add_integration(api, section, "email", "custom_http", config={"url": fresh_provider.url("/sink")})
    cid = await create_campaign(api, section, cart_campaign(steps=[step("S0", payload={"s": 0})]))
    policy = CapPolicy(settings.global_cap_messages, settings.global_cap_window)
    journey = JourneyActivities(store, policy, settings.priority_window)
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split("\n")[0][:150])

    async with outbound_session(limit=200, timeout=10.0, connect=5.0) as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True)
        delivery = Delivery(store, registry, SecretBox(settings.secret_keys), signer=Signer(settings.secret_keys),
                            public_url=settings.effective_public_url)  # fmt: skip
        for is_test in (True, False, True, False):
            journeys = [_ids(section.id, cid, (await reachable_user(api, section))[1]) for _ in range(N)]
            for ids in journeys:
                _enroll(journey, ids, is_test)
            prof = cProfile.Profile() if os.environ.get("PROBE_PROFILE") else None
            if os.environ.get("PROBE_SQL"):
                statements.clear()
                event.listen(store.engine, "before_cursor_execute", note)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            for ids in journeys:
                await _step(journey, delivery, ids)
            if prof:
                prof.disable()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            print(f"\nPROBE is_test={is_test} n={N}: {1000 * cpu / N:.2f} ms CPU/journey, {1000 * wall / N:.2f} ms wall")
            if os.environ.get("PROBE_SQL"):
                event.remove(store.engine, "before_cursor_execute", note)
                print(f"{len(statements) / N:.1f} statements per journey; one journey's:")
                print("\n".join(statements[: len(statements) // N]))
            if prof:
                stats = pstats.Stats(prof)
                print(f"PROBE python calls per journey: {stats.total_calls / N:.0f}")  # type: ignore[attr-defined]
                if os.environ.get("PROBE_PROFILE") == "2":
                    stats.sort_stats("cumulative").print_stats(60)
