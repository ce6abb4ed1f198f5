"""Adopt subscriber lists synced before lists had per-generation set tables.

Older versions kept every list entry in one `subscriberentry` table (hash as hex text, value
as a Fernet token). Without this step an upgraded install would find its active lists' set
tables missing, and every send decision reading them would fail until the customer uploaded
a new file. At start-up, each active list whose set table does not exist yet gets one, filled
from the legacy rows: the hash as its 32 bytes, the Fernet token kept as it is behind a
`fernet:` marker (`store.subscribers.effective_opt_in` reads both forms; re-encrypting would
need the secret key, which the store does not hold). The legacy table itself is left alone.
"""

from __future__ import annotations

import logging

from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import Connection, Engine

from store.subscriber_tables import SubscriberList, set_table_name, subscriber_set
from store.subscribers import FERNET_MARK, index_set_on

log = logging.getLogger(__name__)

LEGACY_TABLE = "subscriberentry"
PAGE = 5_000


def adopt_legacy_entries(engine: Engine) -> list[str]:
    """Create and fill the set table of every active list that has legacy rows but no table."""
    adopted: list[str] = []
    with engine.begin() as conn:
        tables = set(inspect(conn).get_table_names())
        if LEGACY_TABLE not in tables:
            return adopted
        lists = conn.execute(
            select(SubscriberList.integration_id, SubscriberList.active_generation).where(  # type: ignore[call-overload]
                SubscriberList.active_generation.is_not(None)  # type: ignore[union-attr]
            )
        ).all()
        for integration_id, generation in lists:
            name = set_table_name(integration_id, generation)
            if name in tables:
                continue
            rows = _copy(conn, name, integration_id, generation)
            adopted.append(f"{name}: {rows} entries of list {integration_id} generation {generation}")
    for line in adopted:
        log.warning("subscriber lists: adopted legacy %s", line)
    return adopted


def _copy(conn: Connection, name: str, integration_id: str, generation: int) -> int:
    table = subscriber_set(name)
    table.create(conn)
    legacy = text(
        f"SELECT value_hash, value_enc FROM {LEGACY_TABLE} "
        "WHERE integration_id = :i AND generation = :g AND value_hash > :after ORDER BY value_hash LIMIT :n"
    )
    after, total = "", 0
    while True:
        page = conn.execute(legacy, {"i": integration_id, "g": generation, "after": after, "n": PAGE}).all()
        if not page:
            break
        conn.execute(
            insert(table),
            [{"value_hash": bytes.fromhex(h), "value_enc": FERNET_MARK + enc.encode()} for h, enc in page],
        )
        total += len(page)
        after = page[-1][0]
    index_set_on(conn, name)
    return total
