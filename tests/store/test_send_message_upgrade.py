"""A database made before sends kept their message gains `send.message_enc` at start-up, on both
stores, and its unfinished sends read as sends without a kept message (composed again on retry)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from store.engine import Store, make_engine
from store.tables import Send
from store.upgrade import upgrade
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def fresh_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the store under test: its own PostgreSQL database, or a new SQLite file."""
    if not db_url.startswith("postgres"):
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    name = "rejoin_old_send_" + secrets.token_hex(4)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_older_database_gains_the_kept_message_column(fresh_url: str) -> None:
    # The schema of the version before: every table as now, `send` without `message_enc`, and a
    # send of that version waiting to be retried.
    old = make_engine(fresh_url, pool_size=1)
    SQLModel.metadata.create_all(old)
    now = datetime.now(UTC).replace(tzinfo=None)
    with old.begin() as conn:
        conn.execute(text("ALTER TABLE send DROP COLUMN message_enc"))
        conn.execute(
            text(
                "INSERT INTO send (key, journey_id, section_id, campaign_id, variation_id, step_index, channel, "
                "integration_id, user_id, status, attempts, possible_duplicate, created_at, updated_at) VALUES "
                "('jny_old:0:email', 'jny_old', 'sec', 'cmp', 'a', 0, 'email', 'int', 'usr', 'in_flight', 1, "
                "false, :at, :at)"
            ),
            {"at": now},
        )
    assert "message_enc" not in {c["name"] for c in inspect(old).get_columns("send")}
    old.dispose()

    store = Store(fresh_url)  # start-up: create_all, then the upgrade adds the column
    try:
        assert "message_enc" in {c["name"] for c in inspect(store.engine).get_columns("send")}
        with store.session() as s:
            send = s.get(Send, "jny_old:0:email")
            assert send is not None and (send.status, send.message_enc) == ("in_flight", None)
            send.message_enc = "sealed"  # the next attempt keeps its message in the new column
            s.add(send)
        with store.session() as s:
            again = s.get(Send, "jny_old:0:email")
            assert again is not None and again.message_enc == "sealed"
        assert upgrade(store.engine, SQLModel.metadata) == []
    finally:
        store.dispose()
