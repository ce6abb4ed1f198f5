"""Keyset pagination: walk a large table in key order a page at a time, with bounded memory.

Faster and safer than OFFSET on big tables: each page starts strictly after the last key seen,
so rows inserted or deleted meanwhile never make it skip or repeat one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

T = TypeVar("T")


def keyset_pages(
    s: Session, model: type[T], key: Any, *where: ColumnElement[bool], page_size: int, expunge: bool = False
) -> Iterator[list[T]]:
    """Pages of `model` rows matching `where`, ordered by the string column `key`.

    `expunge`: drop each page from the session once the caller is done with it, so a walk over
    millions of rows keeps the session's identity map (and memory) bounded.
    """
    after = ""
    while True:
        page = list(
            s.exec(
                select(model).where(*where, col(key) > after).order_by(col(key)).limit(page_size)
            ).all()
        )
        if not page:
            return
        yield page
        after = getattr(page[-1], key.key)
        if expunge:
            for row in page:
                s.expunge(row)
