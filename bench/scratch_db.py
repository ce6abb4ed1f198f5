"""A PostgreSQL database of a benchmark run's own, created on the server a URL names and dropped after.

Runs never share rows: leftovers of an earlier run would change what is measured, and two runs
at once on one server would collide on a fixed name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def on_server(url: str, database: str) -> str:
    """`url` with its database replaced (driver and credentials kept)."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def libpq(url: str) -> str:
    """`url` as psycopg.connect takes it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _admin(url: str) -> str:
    return libpq(on_server(url, "postgres"))


def unique_name(stem: str) -> str:
    return f"{stem}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def create(url: str, database: str) -> str:
    with psycopg.connect(_admin(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    return on_server(url, database)


def drop(url: str, database: str) -> None:
    with psycopg.connect(_admin(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextmanager
def scratch_database(url: str, stem: str) -> Iterator[str]:
    """Yield the URL of a fresh database `<stem>_<pid>_<random>` on `url`'s server; drop it after."""
    name = unique_name(stem)
    own = create(url, name)
    try:
        yield own
    finally:
        drop(url, name)
