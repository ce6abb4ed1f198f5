"""Processes starting together on a fresh database (API + workers in docker-compose) all come up."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL

PROCESSES = 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the store under test: its own PostgreSQL database, or a new SQLite file."""
    if not db_url.startswith("postgres"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = "rejoin_race_" + secrets.token_hex(4)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_processes_creating_the_schema_together_all_start(fresh_url: str) -> None:
    # Each process imports everything, says so, then waits for the word: all then create the
    # schema at the same moment (interpreter start-up alone spreads them by more than that takes).
    code = "\n".join(
        ["import sys", "from store.engine import Store", "print('ready', flush=True)", "sys.stdin.readline()",
         "Store(sys.argv[1])"]
    )  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-c", code, fresh_url], cwd=ROOT, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        for _ in range(PROCESSES)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", p.communicate(timeout=60)[0]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [out[-3000:] for p, out in zip(procs, outputs) if p.returncode != 0]
    assert not failed, f"{len(failed)} of {PROCESSES} processes failed; first:\n{failed[0]}"


def test_the_schema_lock_outlives_a_short_idle_in_transaction_timeout(fresh_url: str) -> None:
    # A server that ends sessions idling in a transaction (a common hardening setting) must not
    # end the start-up lock: its holder sits idle while other connections make the schema.
    if not fresh_url.startswith("postgres"):
        pytest.skip("PostgreSQL's advisory lock; SQLite serialises with BEGIN IMMEDIATE")
    from store.engine import SCHEMA_LOCK_KEY, make_engine, schema_lock

    name = fresh_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '100ms'")
    engine = make_engine(fresh_url)
    try:
        with schema_lock(engine), psycopg.connect(fresh_url, autocommit=True) as probe:
            time.sleep(0.5)  # longer than the timeout: a lock held in an idle transaction is gone by now
            held = probe.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %s",
                [SCHEMA_LOCK_KEY & 0xFFFFFFFF],
            ).fetchone()
            assert held == (1,)
    finally:
        engine.dispose()
