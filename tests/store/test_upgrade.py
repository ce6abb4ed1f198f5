"""An older database gains the columns and indexes added since, on both stores."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import Boolean, Column, Index, Integer, MetaData, String, Table, insert, select, text

from store.engine import Store
from store.upgrade import SchemaUpgradeError, upgrade


def _v1(name: str) -> MetaData:
    md = MetaData()
    Table(name, md, Column("id", String(20), primary_key=True), Column("n", Integer, nullable=False))
    return md


def _v2(name: str, *extra: Column) -> tuple[MetaData, Table]:  # type: ignore[type-arg]
    md = MetaData()
    table = Table(
        name,
        md,
        Column("id", String(20), primary_key=True),
        Column("n", Integer, nullable=False),
        Column("note", String(50), nullable=True),
        Column("active", Boolean, nullable=False, default=True),
        Column("kind", String(10), nullable=False, default="plain"),
        *extra,
        Index(f"ix_{name}_kind", "kind"),
    )
    return md, table


def _indexes(store: Store, table: str) -> set[str]:
    """Index names straight from the catalog (SQLAlchemy's reflection may answer from a cache)."""
    with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE tablename = :t AND indexname NOT LIKE '%_pkey'"
        return {str(r[0]) for r in conn.execute(text(sql), {"t": table})}


def test_missing_columns_and_indexes_are_added_and_old_rows_get_defaults(store: Store) -> None:
    name = "probe_" + secrets.token_hex(4)
    _v1(name).create_all(store.engine)
    with store.engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {name} (id, n) VALUES ('old', 1)"))
    md, table = _v2(name)
    try:
        done = upgrade(store.engine, md)
        assert sorted(done) == sorted(
            [f"added column {name}.note", f"added column {name}.active", f"added column {name}.kind",
             f"added index ix_{name}_kind"]
        )  # fmt: skip
        with store.engine.begin() as conn:
            assert conn.execute(select(table.c.note, table.c.active, table.c.kind)).one() == (None, True, "plain")
            conn.execute(insert(table).values(id="new", n=2, kind="rich"))  # the ORM-side default fills `active`
        assert _indexes(store, name) == {f"ix_{name}_kind"}
        assert upgrade(store.engine, md) == []  # idempotent: a second start does nothing
    finally:
        md.drop_all(store.engine)


def test_a_new_not_null_column_without_default_stops_start_up_naming_it(store: Store) -> None:
    name = "probe_" + secrets.token_hex(4)
    _v1(name).create_all(store.engine)
    md, _ = _v2(name, Column("required", Integer, nullable=False))
    try:
        with pytest.raises(SchemaUpgradeError, match=f"{name}.required"):
            upgrade(store.engine, md)
    finally:
        md.drop_all(store.engine)


def test_the_real_schema_is_complete_after_start_up(store: Store) -> None:
    """Store() ran create_all + upgrade: nothing is left to add."""
    from sqlmodel import SQLModel

    assert upgrade(store.engine, SQLModel.metadata) == []
