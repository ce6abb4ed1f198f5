"""Lists stored by older versions (a `subscriberentry` table; sets keyed by whole hashes) keep working."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.fernet import Fernet
from sqlalchemy import insert, text

from domain.events import email_hash
from security.crypto import SecretBox
from security.rotation import rotate_all
from settings import Settings
from store.engine import Store
from store.subscriber_legacy import adopt_legacy_entries
from store.subscriber_tables import SubscriberList, set_table_name, subscriber_set
from store.subscribers import create_set, effective_opt_in, index_set

LEGACY_DDL = (
    "CREATE TABLE IF NOT EXISTS subscriberentry (integration_id VARCHAR(40) NOT NULL, generation INTEGER NOT NULL, "
    "value_hash VARCHAR(64) NOT NULL, value_enc TEXT NOT NULL, PRIMARY KEY (integration_id, generation, value_hash))"
)


def test_active_legacy_list_is_adopted_once_and_still_reaches_its_subscribers(store: Store, settings: Settings) -> None:
    box = SecretBox(settings.secret_keys)
    integration = "int_legacy_" + datetime.now(UTC).strftime("%H%M%S%f")
    emails = [f"legacy{i}@shop.example" for i in range(7)]
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(text(LEGACY_DDL))
        for e in emails:
            conn.execute(text("INSERT INTO subscriberentry VALUES (:i, 2, :h, :v)"),
                         {"i": integration, "h": email_hash(e), "v": box.encrypt(e)})  # fmt: skip
        conn.execute(text("INSERT INTO subscriberentry VALUES (:i, 1, :h, :v)"),  # an older generation: ignored
                     {"i": integration, "h": email_hash("old@shop.example"), "v": box.encrypt("old@shop.example")})  # fmt: skip
    with store.session() as s:
        s.add(SubscriberList(integration_id=integration, section_id="sec_x", channel="email", bucket="b", prefix="p/",
                             iam_user="u", active_generation=2, activated_at=now - timedelta(days=1),
                             next_generation=3, created_at=now))  # fmt: skip
    try:
        adopted = adopt_legacy_entries(store.engine)
        mine = [a for a in adopted if integration in a]
        assert mine == [f"{set_table_name(integration, 2)}: 7 entries of list {integration} generation 2"], adopted
        assert not [a for a in adopt_legacy_entries(store.engine) if integration in a]  # once
        with store.session() as s:
            lst = s.get(SubscriberList, integration)
            assert lst is not None
            for e in (emails[0], emails[6]):
                row = effective_opt_in(s, lst, "sec_x", "email", [email_hash(e)])
                assert row is not None and row.source == "list" and box.decrypt(row.value_enc) == e
            assert effective_opt_in(s, lst, "sec_x", "email", [email_hash("old@shop.example")]) is None
        # Key rotation re-seals the list too: afterwards the new key alone reads every entry.
        new_key = Fernet.generate_key().decode()
        counts = rotate_all(store, SecretBox([new_key, *settings.secret_keys]))
        assert counts["list_entries"] >= len(emails), counts
        only_new = SecretBox([new_key])
        with store.session() as s:
            lst = s.get(SubscriberList, integration)
            assert lst is not None
            for e in emails:
                row = effective_opt_in(s, lst, "sec_x", "email", [email_hash(e)])
                assert row is not None and only_new.decrypt(row.value_enc) == e
        rotate_all(store, SecretBox([*settings.secret_keys, new_key]))  # back: other tests hold the old key
    finally:
        with store.engine.begin() as conn:
            conn.execute(text(f'DROP TABLE IF EXISTS "{set_table_name(integration, 2)}"'))
            conn.execute(text("DELETE FROM subscriberentry WHERE integration_id = :i"), {"i": integration})
            conn.execute(text("DELETE FROM subscriberlist WHERE integration_id = :i"), {"i": integration})


def test_set_keyed_by_whole_hashes_is_still_read_and_rotated(store: Store, settings: Settings) -> None:
    """Sets synced before keys were cut to `KEY_BYTES` hold whole 32-byte hashes: lookups still
    find their values (and answer with the whole hash), rotation re-seals them."""
    box = SecretBox(settings.secret_keys)
    integration = "int_whole_" + datetime.now(UTC).strftime("%H%M%S%f")
    name, now = set_table_name(integration, 1), datetime.now(UTC)
    emails = [f"whole{i}@shop.example" for i in range(5)]
    rows = zip([bytes.fromhex(email_hash(e)) for e in emails], box.seal_many([e.encode() for e in emails]))
    with store.session() as s:
        create_set(s, name)
        s.connection().execute(insert(subscriber_set(name)), [{"value_hash": h, "value_enc": v} for h, v in rows])
        index_set(s, name)
        s.add(SubscriberList(integration_id=integration, section_id="sec_x", channel="email", bucket="b", prefix="p/",
                             iam_user="u", active_generation=1, activated_at=now - timedelta(days=1),
                             next_generation=2, created_at=now))  # fmt: skip
    new_key = Fernet.generate_key().decode()
    try:
        for reader in (box, None):  # before rotation, then with the new key alone
            if reader is None:
                rotate_all(store, SecretBox([new_key, *settings.secret_keys]))
                reader = SecretBox([new_key])
            with store.session() as s:
                lst = s.get(SubscriberList, integration)
                assert lst is not None
                for e in emails:
                    row = effective_opt_in(s, lst, "sec_x", "email", [email_hash("other@x.io"), email_hash(e)])
                    assert row is not None and row.value_hash == email_hash(e) and reader.decrypt(row.value_enc) == e
                assert effective_opt_in(s, lst, "sec_x", "email", [email_hash("absent@shop.example")]) is None
        rotate_all(store, SecretBox([*settings.secret_keys, new_key]))  # back: other tests hold the old key
    finally:
        with store.engine.begin() as conn:
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
            conn.execute(text("DELETE FROM subscriberlist WHERE integration_id = :i"), {"i": integration})
