"""A Rejoin worker in its own process, so reliability tests can SIGKILL it and start another.

Settings come from the environment (the usual `REJOIN_*` / `TEMPORAL_ADDRESS` variables), so
the child polls the test's Temporal server and uses the test's database. Prints `READY` once
polling, which the parent waits for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.temporal import connect_temporal
from settings import Settings
from store.engine import Store
from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent


async def _main() -> None:
    settings = Settings()
    client = await connect_temporal(settings)
    store = Store(settings.effective_database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with build_worker(client, settings, store) as worker:
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(0.2)
        print("READY", flush=True)
        await stop.wait()
        await worker.shutdown()
        await run
    store.dispose()


def spawn(env_vars: dict[str, str], timeout: float = 30.0) -> subprocess.Popen[str]:
    """Start a worker process and return once it polls (raises if it dies first)."""
    env = {**os.environ, **env_vars, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.worker_proc"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "READY":
            return proc
        if not line and proc.poll() is not None:
            raise RuntimeError(f"worker process exited with {proc.returncode}")
    proc.kill()
    raise RuntimeError("worker process did not become ready")


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: no drain, no cleanup, exactly like a node dying."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_main())
