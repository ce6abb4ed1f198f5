"""Bring an existing database up to the tables this version declares.

`create_all` creates missing tables but never touches existing ones, so a database made by an
older Rejoin would lack the columns and indexes added since, and the first query naming one
would fail. At start-up this adds them: a missing column is added when it can be without
rewriting data, i.e. it is nullable or has a scalar default (written as the column's server
default, so existing rows get it); anything else stops start-up with a message naming the
column, rather than failing later on some request. Dropping or changing columns is never
done automatically.
"""

from __future__ import annotations

import logging
from enum import Enum

from sqlalchemy import Column, MetaData, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateIndex

log = logging.getLogger(__name__)


class SchemaUpgradeError(RuntimeError):
    """The database needs a change this module does not make on its own."""


def upgrade(engine: Engine, metadata: MetaData) -> list[str]:
    """Add the columns and indexes `metadata` declares that the database lacks; return what was done."""
    done: list[str] = []
    with engine.begin() as conn:  # one connection: SQLite takes its write lock per transaction
        inspector = inspect(conn)
        existing_tables = set(inspector.get_table_names())
        for table in metadata.sorted_tables:
            if table.name not in existing_tables:
                continue  # create_all made it, complete
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    conn.execute(text(_add_column_sql(engine, table.name, column)))
                    done.append(f"added column {table.name}.{column.name}")
            indexes = {i["name"] for i in inspector.get_indexes(table.name)}
            for index in table.indexes:
                if index.name and index.name not in indexes:
                    conn.execute(CreateIndex(index, if_not_exists=True))  # reflection may lag: never fail on it
                    done.append(f"added index {index.name}")
    for line in done:
        log.warning("schema upgrade: %s", line)
    return done


def _add_column_sql(engine: Engine, table: str, column: Column) -> str:  # type: ignore[type-arg]
    preparer = engine.dialect.identifier_preparer
    col_type = column.type.compile(dialect=engine.dialect)
    sql = f"ALTER TABLE {preparer.quote(table)} ADD COLUMN {preparer.quote(column.name)} {col_type}"
    default = _scalar_default(column)
    if default is not None:
        sql += f" DEFAULT {default}"
    if not column.nullable:
        if default is None:
            raise SchemaUpgradeError(
                f"column {table}.{column.name} is new, NOT NULL and has no scalar default: "
                "add it by hand (ALTER TABLE ... ADD COLUMN ... with a value for existing rows)"
            )
        sql += " NOT NULL"
    return sql


def _scalar_default(column: Column) -> str | None:  # type: ignore[type-arg]
    """The column's default as a SQL literal, when it is a plain scalar."""
    if column.server_default is not None:
        arg = getattr(column.server_default, "arg", None)
        return str(getattr(arg, "text", arg)) if arg is not None else None
    default = column.default
    value = getattr(default, "arg", None) if default is not None and getattr(default, "is_scalar", False) else None
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return None
