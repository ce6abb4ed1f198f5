"""Keep the cart index (`CartEntry`) equal to users' carts, and query it.

`reindex` runs in the transaction that changes a cart (ingestion of cart and purchase events,
identity merges), so the index is never behind a committed cart. `rebuild` fills it for data
written before the index existed (`rejoin reindex-carts`).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, bindparam, delete
from sqlmodel import Session, col, select

from store.cart_tables import CartEntry
from store.identity_tables import UserAlias
from store.paging import keyset_pages
from store.statements import table_of
from store.subscribers import insert_ignoring
from store.tables import User

PAGE = 1000


def skus(user: User) -> set[str]:
    """The SKUs in a user's cart (what the index holds for them)."""
    return {str(i["productId"]) for i in user.cart if isinstance(i, dict) and i.get("productId")}


def reindex(s: Session, user: User) -> None:
    """Make the index hold exactly this user's cart."""
    s.execute(delete(CartEntry).where(col(CartEntry.user_id) == user.id))
    add_entries(s, user)


_TABLE = table_of(CartEntry)
# Built once: this runs for most cart events of known users.
_REMOVE = delete(_TABLE).where(
    _TABLE.c.user_id == bindparam("user_id"), _TABLE.c.sku.in_(bindparam("skus", expanding=True))
)


def update(s: Session, user: User, before: set[str]) -> None:
    """Bring the index from `before` (the user's cart SKUs before an event) to the user's cart.

    Only the difference is written: an add-to-cart is one INSERT, where `reindex` deletes and
    re-inserts the whole cart (two round trips on the hot path of every returning shopper).
    """
    after = skus(user)
    if gone := before - after:
        s.connection().execute(_REMOVE, {"user_id": user.id, "skus": sorted(gone)})
    insert_ignoring(s, CartEntry, _entries(user, after - before))


def add_entries(s: Session, user: User) -> None:
    """Index this user's cart; alone (without `reindex`'s delete) only for a user with no entries yet."""
    insert_ignoring(s, CartEntry, _entries(user, skus(user)))


def _entries(user: User, cart_skus: set[str]) -> list[dict[str, object]]:
    """Index rows of these SKUs in the user's cart."""
    return [{"section_id": user.section_id, "sku": sku, "user_id": user.id} for sku in sorted(cart_skus)]


def holders(s: Session, section_id: str, skus: set[str]) -> dict[str, list[str]]:
    """user id -> the SKUs among `skus` in that user's cart (from the index; O(matching carts))."""
    out: dict[str, list[str]] = {}
    listed = sorted(skus)
    for i in range(0, len(listed), PAGE):
        rows = s.exec(
            select(CartEntry.user_id, CartEntry.sku)
            .where(CartEntry.section_id == section_id, col(CartEntry.sku).in_(listed[i : i + PAGE]))
            .order_by(col(CartEntry.user_id), col(CartEntry.sku))
        )
        for user_id, sku in rows:
            out.setdefault(user_id, []).append(sku)
    return out


def rebuild(s: Session, section_id: str | None = None) -> int:
    """Re-create the index from users' carts (all sections, or one); the number of entries."""
    scope = [col(CartEntry.section_id) == section_id] if section_id else []
    s.execute(delete(CartEntry).where(*scope))
    where: list[ColumnElement[bool]] = [col(User.id).not_in(select(UserAlias.alias_id))]  # merged-away: no cart
    if section_id:
        where.append(col(User.section_id) == section_id)
    total = 0
    for page in keyset_pages(s, User, User.id, *where, page_size=PAGE, expunge=True):
        rows = [row for u in page for row in _entries(u, skus(u))]
        insert_ignoring(s, CartEntry, rows)
        total += len(rows)
    return total
