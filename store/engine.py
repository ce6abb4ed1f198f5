"""Database engine and sessions for SQLite (default) and PostgreSQL.

SQLite runs in WAL mode with `synchronous=NORMAL` and takes the write lock at the start of
every transaction (`BEGIN IMMEDIATE`): two transactions that read then write (cap
reservations) would otherwise deadlock on lock upgrade and fail with "database is locked"
instead of waiting. PostgreSQL serialises the same sections with advisory locks
(`store/locks.py`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine

import store.broadcast_tables  # noqa: F401
import store.cart_tables  # noqa: F401
import store.feed_tables  # noqa: F401
import store.identity_tables  # noqa: F401
import store.migrations  # noqa: F401
import store.report_links  # noqa: F401
import store.report_tables  # noqa: F401
import store.subscriber_tables  # noqa: F401
import store.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
import store.tracking_tables  # noqa: F401
from store.subscriber_legacy import adopt_legacy_entries
from store.upgrade import upgrade

# A pooled PostgreSQL connection idle this long is pinged before reuse (see `_ping_after_idle`).
PING_AFTER_IDLE = 5.0
# Advisory lock key serialising start-up schema work across processes (`schema_lock`): a fixed
# number ("rejoin" in ASCII); `store/locks.py` keys are 64-bit hashes, so they cannot clash in practice.
SCHEMA_LOCK_KEY = 0x72656A6F696E


# A failed statement's error (logged with its traceback: a worker's activity failure, the API's 500)
# leaves out its parameters: they are the rows' values, addresses, carts, provider answers.
HIDE_PARAMETERS = True


def normalise_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        _create_private_file(url)
        # A pool of open connections: opening one per transaction (and re-running the PRAGMAs)
        # cost more than the transaction itself. Writers still serialise on BEGIN IMMEDIATE.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            hide_parameters=HIDE_PARAMETERS,
        )
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size * 2, hide_parameters=HIDE_PARAMETERS)
        _ping_after_idle(engine)
    return engine


def _create_private_file(url: str) -> None:
    """Create a SQLite database file that does not exist yet with mode 600 before SQLite opens it.

    SQLite would create it 644 (less the umask), readable by every local user, and it holds
    PII. SQLite gives the -wal and -shm files it makes the database file's mode, so they are
    owner only too. An existing file is left as it is (the operator may have chosen its mode);
    in-memory databases have no file.
    """
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):  # there already, or no such folder (SQLite says)
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _ping_after_idle(engine: Engine) -> None:
    """Check a pooled connection before use only if it sat idle for a while.

    `pool_pre_ping` pings on every checkout: a round trip per transaction, measurable on the
    ingestion path (short transactions back to back). A connection used a moment ago is alive
    as far as a ping could tell; one idle for `PING_AFTER_IDLE` seconds (a database restart,
    a proxy's idle timeout) is pinged and, if dead, replaced by the pool before anyone uses it.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return  # new, or just used
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError("pooled connection is dead") from exc
        if not alive:
            raise DisconnectionError("pooled connection is dead")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); the driver's implicit transactions would defer locking.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Hold PostgreSQL's start-up schema lock, so processes starting together take turns.

    `create_all` checks then creates each table, and two processes doing so at once on a fresh
    database both try to create the same type (a UniqueViolation on pg_type): the API and workers
    start together (docker-compose). The lock is session-level on an autocommit connection of its
    own: a transaction-level lock would leave that connection idle in a transaction for the whole
    start-up, which a server with `idle_in_transaction_session_timeout` ends (and the lock with
    it). It is released at the end, or when a crashed holder's connection closes.
    SQLite needs none: each step below runs in one `BEGIN IMMEDIATE` transaction, which already
    serialises processes, and checks what exists inside it.
    """
    if is_sqlite(engine):
        yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})


def create_schema(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)
    for step in (_upgrade_tables, adopt_legacy_entries):
        try:
            step(engine)
        except SQLAlchemyError:
            # The API and a worker starting together may both make the same change: the loser
            # fails; by now the winner has committed, so a second look finds nothing to do.
            step(engine)


def _upgrade_tables(engine: Engine) -> list[str]:
    return upgrade(engine, SQLModel.metadata)


class Store:
    """The engine plus a session factory; one per process, shared by API and activities."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        from store.report_rollup import migrate_reports  # imports the table modules this one registers

        with schema_lock(self.engine):  # one process at a time makes or upgrades the schema
            create_schema(self.engine)
            with self.session() as s:
                migrate_reports(s)  # report data stored before the pre-aggregation or a later column

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
