"""The raw-engine baselines: bare Temporal workflows with no Rejoin code, and their worker.

python -m bench.bare ADDRESS TASK_QUEUE     (runs a worker; prints READY)
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker


@activity.defn
async def noop(x: str) -> str:
    return x


@workflow.defn
class BareOneActivity:
    """A workflow with one trivial activity: the floor for 'a journey end to end'."""

    @workflow.run
    async def run(self, x: str) -> str:
        return await workflow.execute_activity(noop, x, start_to_close_timeout=timedelta(seconds=30))


@workflow.defn
class BareWaiter:
    """Started or signalled by signal-with-start, then waits: the floor for ingestion."""

    def __init__(self) -> None:
        self.pokes = 0

    @workflow.signal
    def poke(self, _x: str) -> None:
        self.pokes += 1

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.pokes > 10_000, timeout=timedelta(days=1))


async def _main(address: str, queue: str) -> None:
    client = await Client.connect(address)
    # The same workflow runner as Rejoin's workers (unsandboxed, `REJOIN_WORKFLOW_SANDBOX=false`):
    # the sandbox's per-workflow import cost would slow the baseline and flatter the ratios.
    worker = Worker(client, task_queue=queue, workflows=[BareOneActivity, BareWaiter], activities=[noop],
                    max_concurrent_activities=100, workflow_runner=UnsandboxedWorkflowRunner())  # fmt: skip
    async with worker:
        print("READY", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
