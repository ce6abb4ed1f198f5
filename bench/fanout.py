"""Benchmark 3's scheduled fan-out: a batched campaign run to every user of a section, timed at the sink.

Everything goes through the public API of the benchmark's stack, as a user would do it:
- a section and an `app_push` integration of kind `custom_http` posting to the sink (scheduled
  campaigns send on push channels only), optionally with `rate_limit_per_second`;
- `n` users, each opted in to app push by its own `message-optin-v1` event on
  `POST /v2/collect/user/event`, 32 requests in flight (the API has no bulk path that opts users
  in to push: subscriber lists are for email and SMS, user feeds carry attributes, not tokens);
- a `scheduled` campaign with `schedule.send_at` a few whole seconds ahead, activated (its
  Temporal Schedule will fire at that instant), and `POST /campaigns/{id}/runs`, which names the
  same run and starts its `BroadcastWorkflow` (the schedule's fire then finds it and sends nothing);
- `GET /runs/{id}` polled until the run's state is `done`.

The rate is measured at the sink from its first to its last request of the run (`GET /stats`),
which also says how often each idempotency key (`bcast:<run>:<user>:<channel>`, one per
recipient) arrived: every recipient must arrive exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from bench.harness import ADMIN_KEY, Stack

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SETUP_CONCURRENCY = 32
# The schedule's instant is this far ahead of the campaign's creation: enough for activation and
# the run's start to be done before it, so the run waits for it as a scheduled one does.
LEAD = timedelta(seconds=3)
POLL_SECONDS = 0.5


class Caller(Protocol):
    """`bench.__main__.Api.call`: one API request, its JSON answer, failing on another status."""

    async def call(self, method: str, path: str, headers: dict[str, str], body: Any = None, want: int = 200) -> Any: ...


async def sink_stats(sink: str, start: int, limit: float | None = None) -> dict[str, Any]:
    """The sink's requests after the first `start` (bench/sink.py `GET /stats`)."""
    params: dict[str, float] = {"from": start, **({"limit": limit} if limit else {})}
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.get(f"{sink}/stats", params=params)
        r.raise_for_status()
        stats: dict[str, Any] = r.json()
        return stats


async def _sink_count(sink: str) -> int:
    async with httpx.AsyncClient() as c:
        return int((await c.get(sink + "/count")).text)


async def _section(api: Caller, sink: str, rate_limit: float | None) -> dict[str, Any]:
    sec = await api.call("POST", "/api/v1/sections", ADMIN, {"name": "bench fan-out"}, 201)
    mgmt = {"Authorization": f"Bearer {sec['management_key']['key']}"}
    integ: dict[str, Any] = {"channel": "app_push", "name": "sink", "kind": "custom_http", "identifier_type": "custom",
                             "config": {"url": sink + "/send"}}  # fmt: skip
    if rate_limit is not None:
        integ["rate_limit_per_second"] = rate_limit
    await api.call("POST", "/api/v1/integrations", mgmt, integ, 201)
    return {"id": sec["id"], "mgmt": mgmt, "ing": {"dy-api-key": sec["ingestion_key"]["key"]}}


async def _push_users(api: Caller, sec: dict[str, Any], n: int) -> float:
    """`n` users opted in to app push, one opt-in event each; seconds taken."""
    tag = secrets.token_hex(4)
    todo = iter(range(n))

    async def lane() -> None:
        for i in todo:
            event = {"name": "Opt-in", "properties": {"dyType": "message-optin-v1", "pushID": f"tok-{tag}-{i}",
                                                      "channelType": "APP_PUSH"}}  # fmt: skip
            body = {"user": {"dyid": f"{5 * 10**12 + i}", "active_consent_accepted": True}, "events": [event]}
            await api.call("POST", "/v2/collect/user/event", sec["ing"], body, 202)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(SETUP_CONCURRENCY)))
    return time.perf_counter() - start


async def _scheduled_campaign(api: Caller, sec: dict[str, Any]) -> tuple[str, datetime]:
    """An active scheduled push campaign to everyone, sending at a whole second a few seconds ahead."""
    send_at = (datetime.now(UTC) + LEAD).replace(microsecond=0) + timedelta(seconds=1)
    step = {"name": "Push", "messages": {"app_push": {"payload": {"title": "Sale", "body": "Today only"}}}}
    spec = {"name": "bench fan-out", "type": "scheduled", "channel_priority": ["app_push"],
            "schedule": {"send_at": send_at.isoformat()},
            "variations": [{"id": "a", "name": "A", "share": 100, "steps": [step]}]}  # fmt: skip
    camp = await api.call("POST", "/api/v1/campaigns", sec["mgmt"], spec, 201)
    await api.call("POST", f"/api/v1/campaigns/{camp['id']}/activate", sec["mgmt"])
    return str(camp["id"]), send_at


async def _wait_done(api: Caller, sec: dict[str, Any], run_id: str, timeout: float) -> tuple[dict[str, Any], list[str]]:
    """The run once its state is `done`, and what its progress looked like on the way (for a stuck run)."""
    deadline = time.monotonic() + timeout
    trail: list[str] = []
    while True:
        run: dict[str, Any] = await api.call("GET", f"/api/v1/runs/{run_id}", sec["mgmt"])
        seen = f"{run['state']} sent={run['sent']} skipped={run['skipped']} failed={run['failed']} " \
               f"pending={run['pending']}"  # fmt: skip
        if not trail or trail[-1] != seen:
            trail.append(seen)
        if run["state"] == "done":
            return run, trail
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} not done after {timeout:.0f} s; progress: {trail[-5:]}")
        await asyncio.sleep(POLL_SECONDS)


async def fanout(stack: Stack, api: Caller, sink: str, n: int, rate_limit: float | None = None) -> dict[str, Any]:
    """One scheduled fan-out of `n` recipients to `sink`: its rate and checks (see the module doc)."""
    sec = await _section(api, sink, rate_limit)
    setup_s = await _push_users(api, sec, n)
    await stack.settle()  # the set-up's work (dispatch marks, workflow tasks) is not the fan-out's
    start = await _sink_count(sink)
    cpu0 = stack.cpu()
    campaign_id, send_at = await _scheduled_campaign(api, sec)
    run = await api.call("POST", f"/api/v1/campaigns/{campaign_id}/runs", sec["mgmt"], None, 202)
    # A generous budget (a stuck run fails the benchmark, saying how far it got): two minutes plus
    # 100 ms per recipient (one shard's sequential sends to a 50 ms sink take 50+), or the limit's pace twice over.
    budget = 120 + n * max(0.1, 2 / rate_limit if rate_limit else 0.0)
    done, trail = await _wait_done(api, sec, run["id"], budget)
    finished = time.time()
    cpu1 = stack.cpu()
    seen = await sink_stats(sink, start, rate_limit)
    count, first, last = seen["count"], seen["first"], seen["last"]
    span = (last - first) if count > 1 else 0.0
    spent = {k: round((cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) * 1000 / max(1, count), 2) for k in cpu1}
    return {
        # (requests - 1) / (last - first): the rate between the first and the last arrival.
        "msgs_per_s": (count - 1) / span if span > 0 else 0.0,
        "n": n,
        "sink_requests": count,
        "distinct_keys": seen["distinct_keys"],
        "duplicate_requests": seen["duplicate_requests"],
        "missing": n - seen["distinct_keys"],
        "without_key": seen["without_key"],
        "exactly_once": count == n and seen["distinct_keys"] == n and seen["without_key"] == 0,
        "max_in_1s": seen["max_in_1s"],
        # With a limit: the shortest time limit + 1 requests arrived in (under 1 s: the limit was exceeded).
        **({"shortest_span_over_limit_s": seen["shortest_span_over_limit_s"]} if rate_limit else {}),
        "run": {k: done[k] for k in ("id", "state", "total", "sent", "skipped", "failed", "pending")},
        "first_after_send_at_s": (first - send_at.timestamp()) if first else None,
        "span_s": span,
        "done_after_last_s": (finished - last) if last else None,
        "setup_users_per_s": n / setup_s,
        "cpu_ms_per_msg": {k: v for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.01},
        "progress_trail": trail[-8:],
    }


def fanout_row(name: str, delay: int, result: dict[str, Any], bare: dict[str, float]) -> dict[str, Any]:
    """A fan-out's row against the best bare client measured against the same sink delay."""
    best = max(bare, key=lambda k: bare[k])
    rate = result.pop("msgs_per_s")
    return {"name": name, "unit": "msgs/s", "rejoin": rate, "baseline": bare[best], "ratio": rate / bare[best],
            "target": 0.5, "baseline_desc": f"best bare client: {best} ({delay} ms sink); rejoin = scheduled run "
            f"of {result['n']} push recipients, first to last request at the sink", **result}  # fmt: skip


def limited_row(limit: float, result: dict[str, Any], unlimited: dict[str, Any]) -> dict[str, Any]:
    """The rate-limited fan-out: achieved rate against the integration's limit, and whether the
    sink ever saw more than `limit` requests in one second. `unlimited` is the same fan-out's row
    without the limit (`fanout_0ms`, same sink): the limit is only put to the test when that run
    went faster than it (`limit_binding`)."""
    rate = result.pop("msgs_per_s")
    honoured = result["max_in_1s"] <= limit
    return {"name": "fanout_limited", "unit": "msgs/s", "rejoin": rate, "baseline": limit, "ratio": rate / limit,
            "target": None, "limit_honoured": honoured, "unlimited_msgs_per_s": unlimited["rejoin"],
            "unlimited_max_in_1s": unlimited["max_in_1s"], "limit_binding": unlimited["max_in_1s"] > limit,
            "baseline_desc": f"the integration's rate_limit_per_second; limit honoured: {honoured} "
            f"(max {result['max_in_1s']} requests in any 1 s at the sink; {int(limit) + 1} within "
            f"{result['shortest_span_over_limit_s'] or 0:.3f} s at the closest)", **result}  # fmt: skip
