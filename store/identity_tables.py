"""Identity tables: which user ids were merged into which canonical user.

When a device's user identifies with a CUID another user already holds, the device's user is
merged into the CUID's owner: its rows are re-pointed and its id stays as an alias, because
journeys that already started carry the old id in their input and workflow id.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from store.tables import UTCDateTime


class UserAlias(SQLModel, table=True):
    """`alias_id` was merged into `canonical_id`; always one hop (chains are flattened)."""

    alias_id: str = Field(primary_key=True, max_length=40)
    section_id: str = Field(max_length=40)
    canonical_id: str = Field(index=True, max_length=40)
    merged_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
