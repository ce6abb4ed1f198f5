"""Shared fixtures: a real Temporal dev server with time skipping, a real database, a real worker.

The database is SQLite unless `REJOIN_TEST_DB=postgres` (then a fresh PostgreSQL database on
127.0.0.1:5432 is created for the session and dropped after). `bin/test` runs both.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.main import create_app
from runtime.dev_server import temporal_binary
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys, make_section
from tests.provider_server import ProviderServer
from worker import build_worker
from workflows import search

PG_ADMIN_URL = os.environ.get("REJOIN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pytest_report_header() -> str:
    return f"rejoin store under test: {os.environ.get('REJOIN_TEST_DB', 'sqlite')}"


@pytest.fixture(scope="session")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REJOIN_TEST_DB", "sqlite") != "postgres":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'rejoin.db'}"
        return
    name = "rejoin_test_" + secrets.token_hex(4)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_port() -> int:
    """Port of the loopback S3/IAM endpoint; the server itself starts only with the `s3` fixture."""
    return _free_port()


@pytest.fixture(scope="session")
def s3(s3_port: int) -> Iterator[str]:
    """A real S3 + IAM endpoint on loopback (moto in server mode), reached through boto3."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{s3_port}"
    server.stop()


@pytest.fixture(scope="session")
def settings(db_url: str, data_dir: Path, s3_port: int) -> Settings:
    return Settings(
        s3_endpoint_url=f"http://127.0.0.1:{s3_port}",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        # The buckets s3 feeds may read (tests/audience/feed_helpers.py: FEED_BUCKET, ABSENT_FEED_BUCKET).
        feed_s3_buckets="rejoin-test-feeds,rejoin-test-feeds-absent",
        data_dir=data_dir,
        database_url=db_url,
        allow_private_urls=True,
        task_queue="rejoin-test-" + secrets.token_hex(4),
        admin_key="test-admin-key",
        delivery_timeout="PT10S",  # type: ignore[arg-type]
        # Stricter than production: the sandbox refuses non-deterministic calls in workflows.
        workflow_sandbox=True,
    )


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings.effective_database_url)
    yield s
    s.dispose()


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping_v2(
        data_converter=pydantic_data_converter,
        search_attributes=search.ALL,
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.WorkflowTimeSkippingEnabled=true",
            "--dynamic-config-value",
            "limit.historyCount.suggestContinueAsNew=200",
        ],
    ) as env:
        yield env


@pytest.fixture(scope="session")
async def worker(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[Worker]:
    async with build_worker(env.client, settings, store) as w, w:
        yield w


@pytest.fixture(scope="session")
def provider() -> Iterator[ProviderServer]:
    server = ProviderServer(honour_idempotency=True).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_provider(provider: ProviderServer) -> ProviderServer:
    provider.reset()
    return provider


@pytest.fixture(scope="session")
async def api(
    env: WorkflowEnvironment, settings: Settings, store: Store, worker: Worker
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, store=store, temporal=env.client)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test", timeout=60) as client:
        yield client


@pytest.fixture
async def section(api: httpx.AsyncClient) -> SectionKeys:
    return await make_section(api)
