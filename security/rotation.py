"""Key rotation: re-encrypt every stored secret under the newest configured key.

Procedure: prepend a new key to REJOIN_SECRET_KEY (`new,old`), restart, run `rejoin
rotate-secrets` (or POST /api/v1/admin/rotate-secrets). Keep the old key listed (after the new
one) for at least REJOIN_LINK_TTL before dropping it: tracking links, pixels and report links
are signed, and are checked against the listed keys only (docs/security.md).

A value no configured key decrypts is left as it is and named in `RotationIncomplete`, raised
once everything else is done: the usual cause is the old key missing from the list, and after
fixing that a second run finishes the job (rotating a value twice is harmless).
"""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection
from sqlmodel import col, select

from security.crypto import SecretBox, UndecryptableSecret, sealed_token
from store.engine import Store
from store.subscriber_tables import SubscriberList, set_table_name, subscriber_set
from store.subscribers import FERNET_MARK, index_set_on
from store.tables import Integration, OptIn, Send

LIST_CHUNK = 10_000
SHOWN = 5  # ids named per kind in `RotationIncomplete` (a wrong key fails every row)


class RotationIncomplete(RuntimeError):
    """Some stored values could not be decrypted with the configured keys; they were left as they were."""


class _Failures:
    """What no configured key decrypted, per kind: a count and the first few ids (a wrong key fails every row)."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.shown: dict[str, list[str]] = {}

    def add(self, kind: str, ident: str) -> None:
        self.count[kind] = self.count.get(kind, 0) + 1
        if len(shown := self.shown.setdefault(kind, [])) < SHOWN:
            shown.append(ident)

    def line(self, keys: int) -> str:
        parts = []
        for kind, n in self.count.items():
            more = f" and {n - SHOWN} more" if n > SHOWN else ""
            parts.append(f"{kind}: {', '.join(self.shown[kind])}{more}")
        return (
            f"could not decrypt with the {keys} configured key{'' if keys == 1 else 's'}: {'; '.join(parts)}; "
            "those were left unchanged, the rest re-encrypted. List the old key after the new one "
            "(REJOIN_SECRET_KEY=new,old) and run rotate-secrets again"
        )


def rotate_all(store: Store, box: SecretBox, batch: int = 500) -> dict[str, int]:
    """Re-encrypt integration secrets, stored identifiers, the messages kept for sends' retries and active
    subscriber lists; counts per kind.

    Raises `RotationIncomplete` naming what no configured key decrypts, after rotating the rest."""
    counts = {"integrations": 0, "identifiers": 0, "send_messages": 0, "list_entries": 0}
    failed = _Failures()
    with store.session() as s:
        for row in s.exec(select(Integration).where(Integration.secrets_enc.is_not(None))).all():  # type: ignore[union-attr]
            assert row.secrets_enc is not None
            try:
                row.secrets_enc = box.rotate(row.secrets_enc)
            except UndecryptableSecret:
                failed.add("integration secrets", row.id)
                continue
            s.add(row)
            counts["integrations"] += 1
    last_id = 0
    while True:  # identifiers can be many: batches, one transaction each
        with store.session() as s:
            rows = s.exec(select(OptIn).where(OptIn.id > last_id).order_by(OptIn.id).limit(batch)).all()  # type: ignore[arg-type,operator]
            if not rows:
                break
            for opt in rows:
                last_id = opt.id  # type: ignore[assignment]
                try:
                    opt.value_enc = box.rotate(opt.value_enc)
                except UndecryptableSecret:
                    failed.add("identifiers (opt-in ids)", str(opt.id))
                    continue
                s.add(opt)
                counts["identifiers"] += 1
    counts["send_messages"] = _rotate_send_messages(store, box, batch, failed)
    with store.session() as s:
        lists = [(lst.integration_id, lst.active_generation) for lst in s.exec(select(SubscriberList)).all()]
    for integration_id, generation in lists:
        if generation is not None:
            try:
                with store.engine.begin() as conn:  # one list at a time, each swapped atomically
                    counts["list_entries"] += _rotate_set(conn, box, set_table_name(integration_id, generation))
            except UndecryptableSecret:  # the transaction rolled back: the list keeps its old set
                failed.add("subscriber lists", f"{integration_id} generation {generation}")
    if failed.count:
        raise RotationIncomplete(failed.line(box.key_count))
    return counts


def _rotate_send_messages(store: Store, box: SecretBox, batch: int, failed: _Failures) -> int:
    """The message each unfinished send keeps for its retries (`activities/frozen_message.py`): few rows
    (a send drops it once final), but each holds an address and personal content."""
    done, last_key = 0, ""
    while True:
        with store.session() as s:
            rows = s.exec(
                select(Send)
                .where(col(Send.message_enc).is_not(None), col(Send.key) > last_key)
                .order_by(col(Send.key))
                .limit(batch)
            ).all()
            if not rows:
                return done
            for send in rows:
                last_key = send.key
                assert send.message_enc is not None
                try:
                    send.message_enc = box.rotate(send.message_enc)
                except UndecryptableSecret:
                    failed.add("messages kept for retries (send keys)", send.key)
                    continue
                s.add(send)
                done += 1


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
