"""The cart index: which users have which product in their cart, per section.

`User.cart` (JSON) stays the cart itself; this table answers "who has SKU X in their cart" for
price-drop and product-attribute campaigns without reading every user. It holds canonical users
only (a merged-away id's cart moves to the person) and is rewritten, in the same transaction,
wherever a cart changes (`store/cart_index.py`).
"""

from __future__ import annotations

from sqlalchemy import Index
from sqlmodel import Field, SQLModel


class CartEntry(SQLModel, table=True):
    __table_args__ = (Index("ix_cart_entry_user", "user_id"),)

    section_id: str = Field(primary_key=True, max_length=40)
    sku: str = Field(primary_key=True, max_length=256)
    user_id: str = Field(primary_key=True, max_length=40)
