"""Key rotation: re-encrypt every stored secret under the newest configured key.

Procedure: prepend a new key to REJOIN_SECRET_KEY (`new,old`), restart, run `rejoin
rotate-secrets` (or POST /api/v1/admin/rotate-secrets), then drop the old key.
"""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection
from sqlmodel import select

from security.crypto import SecretBox, sealed_token
from store.engine import Store
from store.subscriber_tables import SubscriberList, set_table_name, subscriber_set
from store.subscribers import FERNET_MARK, index_set_on
from store.tables import Integration, OptIn

LIST_CHUNK = 10_000


def rotate_all(store: Store, box: SecretBox, batch: int = 500) -> dict[str, int]:
    """Re-encrypt integration secrets, stored identifiers and active subscriber lists; counts per kind."""
    counts = {"integrations": 0, "identifiers": 0, "list_entries": 0}
    with store.session() as s:
        for row in s.exec(select(Integration).where(Integration.secrets_enc.is_not(None))).all():  # type: ignore[union-attr]
            assert row.secrets_enc is not None
            row.secrets_enc = box.rotate(row.secrets_enc)
            s.add(row)
            counts["integrations"] += 1
    last_id = 0
    while True:  # identifiers can be many: batches, one transaction each
        with store.session() as s:
            rows = s.exec(select(OptIn).where(OptIn.id > last_id).order_by(OptIn.id).limit(batch)).all()  # type: ignore[arg-type,operator]
            if not rows:
                break
            for opt in rows:
                opt.value_enc = box.rotate(opt.value_enc)
                s.add(opt)
                last_id = opt.id  # type: ignore[assignment]
            counts["identifiers"] += len(rows)
    with store.session() as s:
        lists = [(lst.integration_id, lst.active_generation) for lst in s.exec(select(SubscriberList)).all()]
    for integration_id, generation in lists:
        if generation is not None:
            with store.engine.begin() as conn:  # one list at a time, each swapped atomically
                counts["list_entries"] += _rotate_set(conn, box, set_table_name(integration_id, generation))
    return counts


def _rotate_set(conn: Connection, box: SecretBox, name: str) -> int:
    """Re-seal one list's set into a fresh table under the newest key, then swap it in.

    Rows are streamed (bounded memory); readers see the old table until the swap commits.
    """
    old, new = subscriber_set(name), subscriber_set(name + "_rotating")
    if not conn.dialect.has_table(conn, name):
        return 0
    new.drop(conn, checkfirst=True)
    new.create(conn)
    total = 0
    # Streaming is set on the statement: on the connection it would make the inserts below
    # server-side too (psycopg refuses executemany there).
    rows = conn.execute(sa_select(old).execution_options(stream_results=True, yield_per=LIST_CHUNK))
    for chunk in rows.partitions(LIST_CHUNK):
        values = [box.decrypt(_token(bytes(r.value_enc))).encode() for r in chunk]
        sealed = box.seal_many(values)
        conn.execute(insert(new), [{"value_hash": bytes(r.value_hash), "value_enc": v} for r, v in zip(chunk, sealed)])
        total += len(chunk)
    old.drop(conn)
    conn.exec_driver_sql(f'ALTER TABLE "{new.name}" RENAME TO "{name}"')
    index_set_on(conn, name)
    return total


def _token(raw: bytes) -> str:
    return raw[len(FERNET_MARK) :].decode() if raw.startswith(FERNET_MARK) else sealed_token(raw)
