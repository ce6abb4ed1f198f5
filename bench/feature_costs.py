"""(7) What each Temporal feature a journey uses costs, on bare workflows in the same run.

    python -m bench --only costs

A journey is more than "a workflow with one activity": it is started by signal-with-start, waits
on a timer (time skipped for test users), ran its enroll store step as a local activity (until
patch `enroll-at-trigger` moved enrollment into the API's ingestion transaction; previews and older
journeys still do), carries a `workflow.patched` version marker and writes its status as search
attributes. Each variant below
adds one of those to the one before; the variants run interleaved for a few rounds against one
dev server, and the table gives the median CPU milliseconds per workflow of the Temporal server
and of this process (the worker and the client), so the cost of a design choice in a workflow
can be read off instead of guessed (docs/performance.md, "Where a journey's server CPU goes").
"""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import TimeSkipper
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.harness import Stack, cpu_seconds

_STATUS = SearchAttributeKey.for_keyword("RejoinJourneyStatus")
_STEP = SearchAttributeKey.for_int("RejoinStepIndex")

# Cumulative: each variant is the one before plus one feature (the name says which).
VARIANTS: list[tuple[str, frozenset[str]]] = [
    ("one activity (bare)", frozenset()),
    ("+ signal-with-start", frozenset({"sws"})),
    ("+ timer, time skipped", frozenset({"sws", "timer"})),
    ("+ local activity", frozenset({"sws", "timer", "local"})),
    ("+ patch marker", frozenset({"sws", "timer", "local", "patch"})),
    ("+ 2 search-attr upserts", frozenset({"sws", "timer", "local", "patch", "upserts"})),
]


@activity.defn(name="costs.noop")
async def noop(x: str) -> str:
    return x


@activity.defn(name="costs.local_noop")
def local_noop(x: str) -> str:
    return x


@workflow.defn(name="CostsProbe")
class CostsProbe:
    def __init__(self) -> None:
        self.pokes = 0

    @workflow.signal
    def poke(self, _x: str) -> None:
        self.pokes += 1

    @workflow.run
    async def run(self, features: list[str]) -> str:
        if "patch" in features:
            workflow.patched("costs-probe")
        if "local" in features:
            await workflow.execute_local_activity(local_noop, "x", start_to_close_timeout=timedelta(seconds=30))
        if "upserts" in features:
            workflow.upsert_search_attributes([_STATUS.value_set("waiting"), _STEP.value_set(0)])
        if "timer" in features:
            try:
                await workflow.wait_condition(lambda: self.pokes > 1, timeout=timedelta(hours=1))
            except TimeoutError:
                pass
        result = await workflow.execute_activity(noop, "x", start_to_close_timeout=timedelta(seconds=30))
        if "upserts" in features:
            workflow.upsert_search_attributes([_STATUS.value_set("completed")])
        return result


async def _run_variant(
    client: Client, skipping: Client, queue: str, tag: str, features: frozenset[str], n: int
) -> None:
    lanes = asyncio.Semaphore(64)
    use = skipping if "timer" in features else client

    async def one(i: int) -> None:
        async with lanes:
            extra: dict[str, Any] = {"start_signal": "poke", "start_signal_args": ["x"]} if "sws" in features else {}
            handle = await use.start_workflow(
                CostsProbe.run, sorted(features), id=f"{tag}-{i}", task_queue=queue, **extra
            )
            await handle.result()

    await asyncio.gather(*(one(i) for i in range(n)))


async def bench_feature_costs(stack: Stack, n: int, rounds: int = 3) -> dict[str, Any]:
    assert stack.client is not None and stack.server_pid is not None
    client = await Client.connect(stack.address)
    skipping = TimeSkipper(client).client
    queue = "costs-probe"
    per_variant: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in VARIANTS}
    with ThreadPoolExecutor(max_workers=10) as pool:
        async with Worker(client, task_queue=queue, workflows=[CostsProbe], activities=[noop, local_noop],
                          activity_executor=pool, workflow_runner=UnsandboxedWorkflowRunner(),
                          max_concurrent_activities=100):  # fmt: skip
            await _run_variant(client, skipping, queue, "warm-up", VARIANTS[-1][1], 20)
            for r in range(rounds):
                for i, (name, features) in enumerate(VARIANTS):
                    server0, own0, t0 = cpu_seconds(stack.server_pid), time.process_time(), time.perf_counter()
                    await _run_variant(client, skipping, queue, f"r{r}-v{i}", features, n)
                    elapsed = time.perf_counter() - t0
                    await stack.settle()
                    server = (cpu_seconds(stack.server_pid) - server0) * 1000 / n
                    own = (time.process_time() - own0) * 1000 / n
                    per_variant[name].append((server, own, n / elapsed))
    rows = {
        name: {
            "server_ms": statistics.median(s for s, _, _ in runs),
            "worker_and_client_ms": statistics.median(w for _, w, _ in runs),
            "workflows_per_s": statistics.median(rate for _, _, rate in runs),
        }
        for name, runs in per_variant.items()
    }
    names = [name for name, _ in VARIANTS]
    for before, after in zip(names, names[1:], strict=False):
        rows[after]["server_ms_added"] = rows[after]["server_ms"] - rows[before]["server_ms"]
        rows[after]["worker_and_client_ms_added"] = (
            rows[after]["worker_and_client_ms"] - rows[before]["worker_and_client_ms"]
        )
    print(
        f"\n{'feature costs (median of ' + str(rounds) + ')':<28}{'server ms':>11}{'added':>8}{'worker ms':>11}{'added':>8}"
    )
    for name in names:
        row = rows[name]
        print(f"{name:<28}{row['server_ms']:>11.1f}{row.get('server_ms_added', 0.0):>8.1f}"
              f"{row['worker_and_client_ms']:>11.1f}{row.get('worker_and_client_ms_added', 0.0):>8.1f}")  # fmt: skip
    first, last = rows[names[0]], rows[names[-1]]
    return {"name": "feature_costs", "unit": "server ms/workflow", "rejoin": last["server_ms"],
            "baseline": first["server_ms"], "ratio": first["server_ms"] / last["server_ms"], "n": n,
            "rounds": rounds, "variants": rows,
            "baseline_desc": "bare one-activity workflow; rejoin = with every journey feature"}  # fmt: skip
