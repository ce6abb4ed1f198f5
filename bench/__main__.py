"""Run Rejoin's benchmarks, each beside its raw-engine baseline from the same run.

    python -m bench                 # all but subscribers, default sizes (~10 min on 2 cores)
    python -m bench --only ingest,delivery --scale 2
    python -m bench --only reports --database-url postgresql://postgres@127.0.0.1:5432/postgres --scale 10  # 10M facts
    python -m bench --only costs    # what each Temporal feature of a journey costs the server and worker

Prints a table and, last, one JSON line with every figure. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import temporalio

from bench.bare import BareOneActivity, BareWaiter
from bench.fanout import fanout, fanout_row, limited_row
from bench.feature_costs import bench_feature_costs
from bench.harness import ADMIN_KEY, Stack, rss_mb
from bench.report_bench import run as bench_reports
from bench.subscribers import bench_subscribers

CONCURRENCY = 32
# Benchmarks 1 and 2 alternate Rejoin and baseline phases this many times (see _interleaved).
ROUNDS = 3
WORKER_ACTIVITY_SLOTS = 100  # worker.MAX_CONCURRENT_ACTIVITIES
FANOUT_LIMIT = 100.0  # benchmark 3's rate-limited fan-out: the integration's rate_limit_per_second
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def run_pool(n: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    """Run job(0..n-1) with `concurrency` in flight; (elapsed seconds, per-call latencies)."""
    latencies: list[float] = []
    it = iter(range(n))

    async def lane() -> None:
        for i in it:
            t0 = time.perf_counter()
            await job(i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


# ------------------------------------------------------------------ Rejoin API helpers


class Api:
    def __init__(self, stack: Stack) -> None:
        self.http = aiohttp.ClientSession(stack.api_url, connector=aiohttp.TCPConnector(limit=256))

    async def call(self, method: str, path: str, headers: dict[str, str], body: Any = None, want: int = 200) -> Any:
        async with self.http.request(method, path, json=body, headers=headers) as r:
            text = await r.text()
            if r.status != want:
                raise RuntimeError(f"{method} {path}: {r.status} {text[:300]}")
            return json.loads(text) if text else None

    async def section(self, sink_url: str | None, steps: int = 1, wait: str = "PT1H") -> dict[str, Any]:
        sec = await self.call("POST", "/api/v1/sections", ADMIN, {"name": "bench"}, 201)
        mgmt = {"Authorization": f"Bearer {sec['management_key']['key']}"}
        ing = {"dy-api-key": sec["ingestion_key"]["key"]}
        integ: dict[str, Any] = {"channel": "email", "name": "sink", "kind": "outbox", "identifier_type": "email"}
        if sink_url:
            integ.update(kind="custom_http", config={"url": sink_url + "/send"})
        await self.call("POST", "/api/v1/integrations", mgmt, integ, 201)
        step_list = [{"name": f"S{i}", "messages": {"email": {"payload": {"s": i}}}, **({"wait": "P1D"} if i else {})}
                     for i in range(steps)]  # fmt: skip
        spec = {"name": "bench", "type": "cart_abandonment", "trigger": {"wait": wait}, "channel_priority": ["email"],
                "variations": [{"id": "a", "name": "A", "share": 100, "steps": step_list}]}  # fmt: skip
        camp = await self.call("POST", "/api/v1/campaigns", mgmt, spec, 201)
        await self.call("POST", f"/api/v1/campaigns/{camp['id']}/activate", mgmt)
        return {"id": sec["id"], "mgmt": mgmt, "ing": ing, "campaign": camp["id"]}

    async def test_user(self, sec: dict[str, Any], i: int) -> str:
        """A reachable test user (opted in, identified, flagged test: its journeys skip time)."""
        dyid, email = f"{10**12 + i}", f"bench{i}@example.com"
        import hashlib

        await self.call("POST", "/v2/userdata/channels/email/opt-in", sec["ing"],
                        {"identifier": {"type": "email", "value": email}})  # fmt: skip
        login = {
            "name": "Login",
            "properties": {"dyType": "login-v1", "hashedEmail": hashlib.sha256(email.encode()).hexdigest()},
        }
        await self.collect(sec, dyid, login)
        await self.call("PUT", f"/api/v1/users/{dyid}/test", sec["mgmt"], {"is_test": True})
        return dyid

    async def collect(self, sec: dict[str, Any], dyid: str, event: dict[str, Any]) -> None:
        body = {"user": {"dyid": dyid, "active_consent_accepted": True}, "events": [event]}
        await self.call("POST", "/v2/collect/user/event", sec["ing"], body, 202)

    async def close(self) -> None:
        await self.http.close()


def add_to_cart(i: int, *, in_cart: int | None = None) -> dict[str, Any]:
    """Item `i` added to a cart holding item `in_cart` already (if given)."""
    sku = f"sku-{i % 50}"
    skus = ([f"sku-{in_cart % 50}"] if in_cart is not None else []) + [sku]
    return {"name": "Add to Cart", "properties": {"dyType": "add-to-cart-v1", "value": 10.0, "productId": sku,
            "quantity": 1, "cart": [{"productId": s, "quantity": 1, "itemPrice": 10.0} for s in skus]}}  # fmt: skip


async def sink_count(url: str, client: httpx.AsyncClient | None = None) -> int:
    if client is None:
        async with httpx.AsyncClient() as c:
            return int((await c.get(url + "/count")).text)
    return int((await client.get(url + "/count")).text)


async def wait_count(url: str, target: int, timeout: float = 300) -> None:
    # One client for the whole wait: a new httpx client per poll (TLS context, CA bundle) cost
    # the load generator ~15 ms of CPU per journey, taken from the system under test.
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while await sink_count(url, c) < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sink saw {await sink_count(url, c)} of {target}")
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------ benchmarks


def _cpu_per_item(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU milliseconds per item each component spent between two snapshots (where it went)."""
    spent = {k: (after.get(k, 0.0) - before.get(k, 0.0)) * 1000 / n for k in after}
    return {k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def _cpu_ratio(ours: dict[str, float], baseline: dict[str, float]) -> float:
    """Baseline CPU over Rejoin's CPU, every process counted, whenever it was spent (the calls or
    the settling after): the sustained rate's ratio on a machine whose cores are the bound. The
    rate ratio counts only the calls, and each side leaves a different share of its work (the
    workflow tasks a signal causes) to run after its last call has returned."""
    spent = sum(ours.values())
    return round(sum(baseline.values()) / spent, 3) if spent else 0.0


def _add_cpu(total: dict[str, float], before: dict[str, float], after: dict[str, float]) -> None:
    for k in after:
        total[k] = total.get(k, 0.0) + after[k] - before.get(k, 0.0)


def _interleaved(rounds: list[tuple[float, float]]) -> dict[str, Any]:
    """Per-round rates (Rejoin, baseline) of phases run in turn: the ratio is the median of the
    rounds' ratios, so a machine whose speed drifts during the run (a shared VM) moves both sides
    of a round alike instead of one side of the whole benchmark."""
    ratios = [ours / base for ours, base in rounds]
    return {"rejoin": statistics.median(r[0] for r in rounds), "baseline": statistics.median(r[1] for r in rounds),
            "ratio": statistics.median(ratios), "round_ratios": [round(r, 3) for r in ratios]}  # fmt: skip


@dataclass
class _PhasePairs:
    """One ingest benchmark's interleaved phases: Rejoin's, then the baseline's, per round."""

    rates: list[tuple[float, float]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    baseline_latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    baseline_cpu: dict[str, float] = field(default_factory=dict)

    async def run_round(
        self, stack: Stack, n: int, ours: Callable[[int], Awaitable[None]], raw: Callable[[int], Awaitable[None]]
    ) -> None:
        cpu0 = stack.cpu()
        elapsed, lat = await run_pool(n, CONCURRENCY, ours)
        await stack.settle()  # the worker finishes the journeys' tasks before the baseline starts
        cpu1 = stack.cpu()
        b_elapsed, b_lat = await run_pool(n, CONCURRENCY, raw)
        await stack.settle()
        _add_cpu(self.cpu, cpu0, cpu1)
        _add_cpu(self.baseline_cpu, cpu1, stack.cpu())
        self.rates.append((n / elapsed, n / b_elapsed))
        self.latencies += lat
        self.baseline_latencies += b_lat

    def result(self, name: str, desc: str) -> dict[str, Any]:
        total, rounds = len(self.latencies), len(self.rates)  # events and rounds run
        return {"name": name, "unit": "events/s", **_interleaved(self.rates), "target": 0.7,
                "cpu_ratio": _cpu_ratio(self.cpu, self.baseline_cpu),
                "p50_ms": pct(self.latencies, 50) * 1000, "p99_ms": pct(self.latencies, 99) * 1000,
                "baseline_p99_ms": pct(self.baseline_latencies, 99) * 1000, "n": total, "rounds": rounds,
                "cpu_ms_per_event": _cpu_per_item({}, self.cpu, total),
                "baseline_cpu_ms_per_event": _cpu_per_item({}, self.baseline_cpu, total), "baseline_desc": desc}  # fmt: skip


async def bench_ingest(stack: Stack, api: Api, n: int, rounds: int = ROUNDS) -> list[dict[str, Any]]:
    """(1) events/s through POST /v2/collect/user/event against raw signal_with_start, in `rounds`
    interleaved rounds of n events each, for both kinds of trigger the issue names:
    - `ingest`: each event is a new user's add-to-cart, starting a journey (user, device, cart
      index, event, journey and cohort rows; signal-with-start starting a workflow), against
      signal-with-start starting a bare waiting workflow;
    - `ingest_retrigger`: the same users' next add-to-cart (a second item joins the first),
      re-triggering their waiting journey (the user read and updated, the new item indexed, the
      event stored; signal-with-start signalling the running workflow), against signal-with-start
      signalling the running bare workflows.
    """
    sec = await api.section(None, wait="P1D")
    assert stack.client is not None
    client = stack.client
    starts, retriggers = _PhasePairs(), _PhasePairs()
    for r in range(rounds):
        first = (7 * 10**12) + r * n  # new users every round: each first event starts a journey

        async def raw(i: int, r: int = r) -> None:  # starts the bare workflow, or signals it if it runs
            await client.start_workflow(BareWaiter.run, id=f"bare-ingest-{r}-{i}", task_queue=stack.bare_queue,
                                        start_signal="poke", start_signal_args=["x"])  # fmt: skip

        async def first_visit(i: int, first: int = first) -> None:
            await api.collect(sec, f"{first + i}", add_to_cart(i))

        async def next_visit(i: int, first: int = first) -> None:
            await api.collect(sec, f"{first + i}", add_to_cart(i + 1, in_cart=i))  # another item joins the cart

        await starts.run_round(stack, n, first_visit, raw)
        await retriggers.run_round(stack, n, next_visit, raw)
    return [
        starts.result("ingest", "signal_with_start starting a bare waiting workflow, same concurrency"),
        retriggers.result(
            "ingest_retrigger", "signal_with_start signalling the running bare workflow, same concurrency"
        ),
    ]


async def _journeys(stack: Stack, api: Api, n: int, sink: str, cpu: dict[str, float] | None = None) -> float:
    """Triggered journeys per second to `sink`; `cpu`, if given, gets the CPU snapshot taken
    after the set-up (test users), so CPU per journey counts the journeys only."""
    sec = await api.section(sink)
    users = [await api.test_user(sec, i) for i in range(n)]  # set-up, not timed
    await stack.settle()
    if cpu is not None:
        cpu.update(stack.cpu())
    before = await sink_count(sink)
    start = time.perf_counter()
    await run_pool(n, CONCURRENCY, lambda i: api.collect(sec, users[i], add_to_cart(i)))
    await wait_count(sink, before + n)
    return n / (time.perf_counter() - start)


async def _bare_journeys(stack: Stack, n: int, tag: str) -> float:
    assert stack.client is not None
    client = stack.client
    start = time.perf_counter()

    async def one(i: int) -> None:
        await client.execute_workflow(BareOneActivity.run, "x", id=f"bare-{tag}-{i}", task_queue=stack.bare_queue)

    await run_pool(n, CONCURRENCY * 2, one)
    return n / (time.perf_counter() - start)


async def bench_journeys(stack: Stack, api: Api, n: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """(2) triggered journeys/s end to end (cap reservation, render, delivery, waits skipped) vs bare
    workflow, in `rounds` interleaved rounds of n journeys each."""
    sink = stack.start_sink(0)
    rates: list[tuple[float, float]] = []
    cpu: dict[str, float] = {}
    b_cpu: dict[str, float] = {}
    for r in range(rounds):
        cpu0: dict[str, float] = {}
        ours = await _journeys(stack, api, n, sink, cpu0)
        await stack.settle()  # journeys finishing after their delivery must not overlap the baseline
        cpu1 = stack.cpu()
        base = await _bare_journeys(stack, n, f"e2e-{r}")
        await stack.settle()
        _add_cpu(cpu, cpu0, cpu1)
        _add_cpu(b_cpu, cpu1, stack.cpu())
        rates.append((ours, base))
    return {"name": "journeys_e2e", "unit": "journeys/s", **_interleaved(rates), "target": 0.5, "n": n * rounds,
            "rounds": rounds, "cpu_ratio": _cpu_ratio(cpu, b_cpu),
            "cpu_ms_per_journey": _cpu_per_item({}, cpu, n * rounds),
            "baseline_cpu_ms_per_journey": _cpu_per_item({}, b_cpu, n * rounds),
            "baseline_desc": "bare workflow with one trivial activity"}  # fmt: skip


async def _bare_http(url: str, n: int, concurrency: int, kind: str) -> float:
    body = {"to": "x@example.com", "subject": "hi"}
    if kind == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits) as c:
            elapsed, _ = await run_pool(n, concurrency, lambda i: _httpx_post(c, url, body))
    else:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
            elapsed, _ = await run_pool(n, concurrency, lambda i: _aiohttp_post(s, url, body))
    return n / elapsed


async def _httpx_post(c: httpx.AsyncClient, url: str, body: dict[str, str]) -> None:
    (await c.post(url, json=body)).raise_for_status()


async def _aiohttp_post(s: aiohttp.ClientSession, url: str, body: dict[str, str]) -> None:
    async with s.post(url, json=body) as r:
        await r.read()
        r.raise_for_status()


class _Sharded:
    """Option (b) measured for docs/performance.md: several httpx clients, round-robin."""

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        from providers.http import HttpxTransport

        self.shards = [HttpxTransport(c) for c in clients]
        self.i = 0

    async def send(self, *args: Any) -> Any:
        self.i = (self.i + 1) % len(self.shards)
        return await self.shards[self.i].send(*args)


@asynccontextmanager
async def _client(kind: str) -> AsyncIterator[Any]:
    """The outbound client under test: `aiohttp` is what worker.build_worker uses."""
    from providers.http import outbound_session

    timeout = httpx.Timeout(10.0, connect=5.0)
    if kind == "aiohttp":
        async with outbound_session(limit=200, timeout=10.0, connect=5.0) as session:
            yield session
    elif kind == "httpx":  # the worker's client before: one shared httpx pool
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
            yield http
    elif kind == "httpx_tuned":  # option (c): keep every connection alive, HTTP/1.1 only
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, http1=True, http2=False) as http:
            yield http
    else:  # httpx_sharded, option (b): 8 clients of 25 connections
        async with AsyncExitStack() as stack:
            limits = httpx.Limits(max_connections=25, max_keepalive_connections=25)
            clients = [await stack.enter_async_context(httpx.AsyncClient(timeout=timeout, limits=limits))
                       for _ in range(8)]  # fmt: skip
            yield _Sharded(clients)


ADAPTER_CLIENTS = ("aiohttp", "httpx", "httpx_tuned", "httpx_sharded")


async def _adapter_rate(url: str, n: int, kind: str = "aiohttp") -> float:
    """Rejoin's delivery adapter (custom HTTP) with the worker's HTTP client settings, 100 sends in flight."""
    from providers.base import OutboundMessage
    from providers.context import AdapterContext
    from providers.custom_http import CustomHttpProvider
    from providers.http import HttpCaller
    from providers.url_guard import UrlGuard

    async with _client(kind) as http:
        provider = CustomHttpProvider(AdapterContext(HttpCaller(http, UrlGuard(True))))

        async def one(i: int) -> None:
            await provider.send(OutboundMessage(section_id="s", integration_id="i", channel="email",
                                                recipient="x@example.com", payload={"n": i}, idempotency_key=f"k{i}",
                                                config={"url": url}))  # fmt: skip

        elapsed, _ = await run_pool(n, WORKER_ACTIVITY_SLOTS, one)
    return n / elapsed


async def _candidate_rate(url: str, n: int, kind: str) -> float | None:
    """A candidate client's adapter rate, or None if one of its sends failed: the httpx candidates
    time out (10 s) on a loaded machine, which ended the whole benchmark (2026-12-07)."""
    from providers.base import ProviderError

    try:
        return await _adapter_rate(url, n, kind)
    except ProviderError as err:
        print(f"adapter on {kind}: a send failed ({err}); no figure", file=sys.stderr)
        return None


async def bench_delivery(stack: Stack, api: Api, n: int, fanout_n: int) -> list[dict[str, Any]]:
    """(3) messages/s to a sink (instant, 50 ms) vs the best bare client: Rejoin's adapter and
    whole journeys (`delivery_*`), then a scheduled fan-out of `fanout_n` push recipients to the
    same sinks (`fanout_*`; bench/fanout.py), and the same fan-out under the integration's rate limit."""
    out = []
    sinks: dict[int, tuple[str, dict[str, float]]] = {}  # delay -> (sink, bare clients' rates)
    for delay in (0, 50):
        sink = stack.start_sink(delay)
        bare: dict[str, float] = {}
        for kind in ("httpx", "aiohttp"):
            for conc in (1, 32, 128):
                count = n if conc > 1 else max(50, n // 10)
                bare[f"{kind}@{conc}"] = await _bare_http(sink + "/send", count, conc, kind)
        adapter = await _adapter_rate(sink + "/send", n, "aiohttp")
        clients = {"aiohttp": adapter, **{kind: await _candidate_rate(sink + "/send", n, kind)
                                          for kind in ADAPTER_CLIENTS if kind != "aiohttp"}}  # fmt: skip
        e2e = await _journeys(stack, api, max(20, n // 10), sink)
        best = max(bare, key=lambda k: bare[k])
        out.append({"name": f"delivery_{delay}ms", "unit": "msgs/s", "rejoin": adapter, "baseline": bare[best],
                    "ratio": adapter / bare[best], "target": 0.5,
                    "baseline_desc": f"best bare client: {best}; rejoin = custom_http adapter, 100 in flight",
                    "journeys_e2e_msgs_per_s": e2e, "bare_clients": {k: round(v, 1) for k, v in bare.items()},
                    "adapter_clients": {k: v if v is None else round(v, 1) for k, v in clients.items()}})  # fmt: skip
        sinks[delay] = (sink, bare)
    for delay, (sink, bare) in sinks.items():
        await stack.settle()
        out.append(fanout_row(f"fanout_{delay}ms", delay, await fanout(stack, api, sink, fanout_n), bare))
    await stack.settle()
    limited = await fanout(stack, api, sinks[0][0], fanout_n, rate_limit=FANOUT_LIMIT)
    out.append(limited_row(FANOUT_LIMIT, limited, unlimited=next(r for r in out if r["name"] == "fanout_0ms")))
    return out


async def bench_memory(stack: Stack, api: Api, n: int) -> dict[str, Any]:
    """(6) worker memory per waiting journey, and history events per journey step."""
    assert stack.worker is not None and stack.client is not None
    # A fresh worker: its sticky cache (max_cached_workflows, default 1,000) must not already be
    # full of earlier benchmarks' journeys, or new ones would just evict old ones.
    stack.stop(stack.worker)
    await stack.start_worker()
    assert stack.worker is not None
    sec = await api.section(None, wait="P1D")
    warm = 50
    await run_pool(warm, CONCURRENCY, lambda i: api.collect(sec, f"{8 * 10**12 + i}", add_to_cart(i)))
    await asyncio.sleep(3)
    before = rss_mb(stack.worker.pid)
    await run_pool(n, CONCURRENCY, lambda i: api.collect(sec, f"{9 * 10**12 + i}", add_to_cart(i)))
    await asyncio.sleep(5)  # let every journey reach its first timer
    after = rss_mb(stack.worker.pid)
    # History growth: one test user through 1-step and 3-step journeys (time skipped).
    sink = stack.start_sink(0)
    events = {}
    for steps in (1, 3):
        s = await api.section(sink, steps=steps)
        dyid = await api.test_user(s, 100_000 + steps)
        await api.collect(s, dyid, add_to_cart(1))
        user = await api.call("GET", f"/api/v1/users/{dyid}", s["mgmt"])
        handle = stack.client.get_workflow_handle(f"journey/{s['id']}/{s['campaign']}/{user['id']}")
        await asyncio.wait_for(handle.result(), 60)
        events[steps] = len((await handle.fetch_history()).events)
    return {"name": "memory", "unit": "KiB/waiting journey", "rejoin": (after - before) * 1024 / n,
            "baseline": None, "ratio": None, "n": n, "worker_rss_mb_before": before, "worker_rss_mb_after": after,
            "history_events_1_step": events[1], "history_events_3_steps": events[3],
            "history_events_per_extra_step": (events[3] - events[1]) / 2}  # fmt: skip


# ------------------------------------------------------------------ main


def _fmt(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else ("-" if v is None else str(v))


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'benchmark':<16}{'unit':<22}{'rejoin':>10}{'baseline':>10}{'ratio':>8}{'target':>8}  baseline")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        print(f"{r['name']:<16}{r['unit']:<22}{_fmt(r['rejoin']):>10}{_fmt(r.get('baseline')):>10}"
              f"{ratio:>8}{_fmt(r.get('target')):>8}  {r.get('baseline_desc', '')}")  # fmt: skip
    for r in rows:
        extra = {
            k: v
            for k, v in r.items()
            if k not in {"name", "unit", "rejoin", "baseline", "ratio", "target", "baseline_desc"}
        }
        print(f"  {r['name']}: {json.dumps(extra, default=lambda v: round(v, 2))}")


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", default="ingest,journeys,delivery,memory,reports,costs")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every workload size")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="ingest, journeys: interleaved Rejoin/baseline rounds")
    p.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    p.add_argument("--sqlite-rows", type=int, default=None,
                   help="subscribers: rows of the SQLite run (default: min(rows, 1M))")  # fmt: skip
    args = p.parse_args(argv)
    only = set(args.only.split(","))

    def size(base: int) -> int:
        return max(10, int(base * args.scale))

    rows: list[dict[str, Any]] = []
    if "subscribers" in only:  # (4) no Temporal stack needed: the activities run in a child process
        n = size(10_000_000)
        rows.extend(await asyncio.to_thread(bench_subscribers, args.database_url, n,
                                            args.sqlite_rows or min(n, 1_000_000)))  # fmt: skip
    if "reports" in only:  # (5) no Temporal stack either: 1M sends+hits+events per scale unit, own database
        rows.append(bench_reports(args.database_url or "sqlite://", int(1_000_000 * args.scale)))
    if "costs" in only:  # (7) bare workflows with one journey feature more each, own dev server
        stack = Stack()  # Temporal only: no store
        try:
            await stack.start()
            rows.append(await bench_feature_costs(stack, size(200)))
        finally:
            stack.close()
    if only - {"subscribers", "reports", "costs"}:  # the others share one Temporal + API + worker stack
        stack = Stack(args.database_url)
        try:
            await stack.start()
            await stack.start_worker()
            await stack.start_bare_worker()
            await stack.start_api()
            api = Api(stack)
            try:
                if "ingest" in only:
                    rows.extend(await bench_ingest(stack, api, size(1000), max(1, args.rounds)))
                if "journeys" in only:
                    rows.append(await bench_journeys(stack, api, size(200), max(1, args.rounds)))
                if "delivery" in only:
                    rows.extend(await bench_delivery(stack, api, size(1000), size(2000)))
                if "memory" in only:
                    rows.append(await bench_memory(stack, api, size(800)))
            finally:
                await api.close()
        finally:
            stack.close()
    return _report(rows, args.scale)


def _report(rows: list[dict[str, Any]], scale: float) -> int:
    print_table(rows)
    meta = {"python": platform.python_version(), "temporalio": temporalio.__version__, "machine": platform.machine(),
            "cpus": __import__("os").cpu_count(), "scale": scale}  # fmt: skip
    print(json.dumps({"bench": "rejoin", "meta": meta, "results": rows}, default=lambda v: round(v, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
