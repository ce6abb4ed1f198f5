"""A test user's retried send keeps the provider's pace in wall-clock time.

Test users' journeys keep their own clock (waits pass at once). They used to be started with
server-side time skipping as well, which also skipped the timers Temporal waits between activity
retries: a provider answering 429 with `Retry-After: 3` was called again every ~1 s (the cost of
one skip), for the whole delivery budget. These tests start the journey through the API with the
test environment's own time skipping off, so only what Rejoin asks for is in force.
"""

from __future__ import annotations

import secrets
import time

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.helpers import (
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    make_section,
    reachable_user,
)
from tests.provider_server import ProviderServer, Reply


async def _test_user_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, provider: ProviderServer, *replies: Reply
) -> tuple[int, list[float]]:
    """A test user's one-step journey (1 h trigger wait) against scripted replies: the number of
    messages sent and the wall-clock arrival times of the provider calls."""
    path = "/pace/" + secrets.token_hex(4)
    provider.script(path, *replies)
    arrivals: list[float] = []
    provider.on_request = lambda r: arrivals.append(time.monotonic()) if r.path == path else None
    sec = await make_section(api)
    await add_integration(api, sec, kind="custom_http", config={"url": provider.url(path)})
    cid = await create_campaign(api, sec, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, sec)
    flagged = await api.put(f"/api/v1/users/{dyid}/test", json={"is_test": True}, headers=sec.mgmt)
    assert flagged.status_code == 200 and flagged.json()["is_test"] is True
    try:
        # Only the API's choice of client decides whether the journey's time is skipped.
        with env.with_time_skipping_disabled():
            await collect(api, sec, dyid, add_to_cart("sku-1"))
        result = await journey_result(env.client, sec, cid, uid, timeout=90)
    finally:
        provider.on_request = None
    return result.sent, arrivals


async def test_test_user_send_honours_retry_after_and_backoff_in_wall_clock(
    api: httpx.AsyncClient, env: WorkflowEnvironment, fresh_provider: ProviderServer
) -> None:
    """429 Retry-After: 3, then 503 (back-off: the 2nd retry waits 4 s), then 200: the calls are at
    least 3 s and 4 s apart in wall-clock time, and the 1 h trigger wait still passes at once."""
    started = time.monotonic()
    throttled = Reply(429, {"error": "slow down"}, headers={"Retry-After": "3"})
    sent, arrivals = await _test_user_journey(api, env, fresh_provider, throttled, Reply(503), Reply(200))
    assert sent == 1 and len(arrivals) == 3, arrivals
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert gaps[0] >= 2.9, gaps  # Retry-After (was ~1.0 s: the retry timer was skipped)
    assert gaps[1] >= 3.9, gaps  # the policy's back-off for the 2nd retry: 2 s x 2
    assert arrivals[0] - started < 20, "the test user's 1 h wait passed at once"
