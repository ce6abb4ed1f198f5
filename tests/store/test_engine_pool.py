"""PostgreSQL connection pool: a pooled connection that died while idle is replaced, not used."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import store.engine as engine_module
from store.engine import make_engine, normalise_url


def _kill_backends_of(db_url: str, pid: int) -> None:
    plain = normalise_url(db_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.fixture
def pg_url(db_url: str) -> str:
    if not db_url.startswith("postgres"):
        pytest.skip("PostgreSQL pool behaviour")
    return db_url


def _backend_pid_then_kill(pg_url: str, idle_threshold: float, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE", idle_threshold)
    engine = make_engine(pg_url, pool_size=1)
    with engine.connect() as conn:
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    _kill_backends_of(pg_url, pid)  # the pooled connection is now dead
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_killed_while_idle_is_replaced_before_use(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle past the threshold: pinged at checkout, found dead, replaced; the caller never sees it."""
    assert _backend_pid_then_kill(pg_url, 0.0, monkeypatch) > 0


def test_without_the_idle_ping_the_dead_connection_would_surface(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: a connection reused at once is not pinged (the point: no round trip per
    transaction), so a death in that instant reaches the caller as an error."""
    with pytest.raises(OperationalError):
        _backend_pid_then_kill(pg_url, 3600.0, monkeypatch)
