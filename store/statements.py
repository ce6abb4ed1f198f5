"""Prepared Core statements for the hot write paths, built once per process and dialect.

The journey activities write a handful of rows per step. Through the ORM (identity map,
flush) or with statements built per call (`insert(...).values(...)`: construction and cache
key ~0.2-0.7 ms each), that bookkeeping cost several times the statements themselves. A
statement built once and executed with a parameter dict skips both: ~50-80 us on SQLite
(docs/performance.md, "Worker CPU per journey").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

T = TypeVar("T")


def dialect(s: Session) -> str:
    return s.get_bind().dialect.name


def upsert_for(dialect_name: str, table: Table) -> Any:
    """`INSERT` with `on_conflict_do_*` for PostgreSQL or SQLite."""
    return (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(table)


def upsert_base(s: Session, table: Table) -> Any:
    return upsert_for(dialect(s), table)


def per_dialect(build: Callable[[str], T]) -> Callable[[Session], T]:
    """`build(dialect name)` once per dialect; the returned function picks the session's."""
    built: dict[str, T] = {}

    def for_session(s: Session) -> T:
        name = dialect(s)
        stmt = built.get(name)
        if stmt is None:
            stmt = built[name] = build(name)
        return stmt

    return for_session


def table_of(model: Any) -> Table:
    """The Core table of a SQLModel table class."""
    table: Table = model.__table__
    return table


def row_of(obj: Any) -> dict[str, Any]:
    """A SQLModel table object as the parameter dict of a Core INSERT into its table (every column)."""
    return {c.name: getattr(obj, c.name) for c in table_of(type(obj)).columns}
