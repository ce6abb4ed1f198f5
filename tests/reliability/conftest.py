"""Fixtures for reliability tests: an API and worker processes on their own task queue.

Journeys started through `proc_api` run only on workers polling `proc_settings.task_queue`,
which no in-process worker polls: the test decides when a worker exists and when it dies.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from settings import Settings
from store.engine import Store
from tests import worker_proc

# Short so a killed worker's activity attempt times out quickly (virtual time may skip it).
PROC_DELIVERY_TIMEOUT = timedelta(seconds=3)


@pytest.fixture(scope="session")
def proc_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"task_queue": "rejoin-proc-" + secrets.token_hex(4), "delivery_timeout": PROC_DELIVERY_TIMEOUT}
    )


@pytest.fixture(scope="session")
async def proc_api(env: WorkflowEnvironment, proc_settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(proc_settings, store=store, temporal=env.client)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test", timeout=60) as client:
        yield client


@pytest.fixture
def spawn_worker(
    env: WorkflowEnvironment, proc_settings: Settings
) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Start worker processes on the proc queue; every one still alive is killed at teardown."""
    started: list[subprocess.Popen[str]] = []
    env_vars = {
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "REJOIN_DATABASE_URL": proc_settings.effective_database_url,
        "REJOIN_DATA_DIR": str(proc_settings.data_dir),
        "REJOIN_TASK_QUEUE": proc_settings.task_queue,
        "REJOIN_ALLOW_PRIVATE_URLS": "true",
        "REJOIN_DELIVERY_TIMEOUT": "PT3S",
        "REJOIN_SECRET_KEY": ",".join(proc_settings.secret_keys),
    }

    def spawn() -> subprocess.Popen[str]:
        proc = worker_proc.spawn(env_vars)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        worker_proc.kill(proc)
