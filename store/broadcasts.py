"""Who a batched campaign run sends to: recipients from feed changes or the whole audience.

Cart holders come from the cart index (`store/cart_index.py`), the whole audience from a
keyset-paginated walk of users (bounded memory); recipients are
inserted in batches, ignoring ones already there, so a retried planning step is harmless.
Aliases (merged-away user ids) are never recipients: their rows point at the canonical user.
Nor are erased people (`User.erased_at`): their tombstones have no one to send to.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from domain import feeds as feed_rules
from domain.campaign import CampaignSpec
from domain.conditions import matches
from domain.matching import product_record
from store import cart_index
from store.broadcast_tables import BroadcastRecipient
from store.feed_tables import ProductChange, UserAttributeChange
from store.identity_tables import UserAlias
from store.paging import keyset_pages
from store.subscribers import insert_ignoring
from store.tables import Event, Journey, Product, User
from workflows.ids import batched_journey_id

# A pending recipient's reason while it waits (`not_before` set): for its send window
# (activities/broadcast.py `_prepare`) or its retry backoff (`_defer_retry`). The run's progress
# (api/routes/feeds.py) tells the two apart by these prefixes.
WINDOW_REASON = "waiting for the send window"
RETRY_REASON = "retrying after"

PAGE = 1000
VIEW_LOOKBACK = timedelta(days=30)


def shard_of(user_id: str, shards: int) -> int:
    return zlib.crc32(user_id.encode()) % max(1, shards)


def all_users(s: Session, section_id: str) -> Iterator[list[User]]:
    """The section's users a page at a time, without ids merged into another person nor erased ones
    (a tombstone listed was enrolled, so counted in the campaign report, then skipped `no_identifier`)."""
    where = (col(User.section_id) == section_id, col(User.erased_at).is_(None))
    for page in keyset_pages(s, User, User.id, *where, page_size=PAGE):
        aliases = set(
            s.exec(select(UserAlias.alias_id).where(col(UserAlias.alias_id).in_([u.id for u in page]))).all()
        )
        yield [u for u in page if u.id not in aliases]


def recipients_of_journeys(s: Session, journeys: list[Journey]) -> dict[str, BroadcastRecipient]:
    """The recipient row of each batched run's journey row (`bj_…`) among `journeys`, by journey id:
    its status and reason are what the run did for that person (the journey row itself only
    records the allocation). Read by the journeys API for one person, so it stays a lookup by
    primary key prefix (run, user), also under the ids merged into them."""
    batched = [j for j in journeys if j.id.startswith("bj_") and j.workflow_id.startswith("broadcast/")]
    if not batched:
        return {}
    runs = {j.workflow_id.removeprefix("broadcast/") for j in batched}
    users = {j.user_id for j in batched}
    # A row planned under an id merged away since carries the alias; its journey row (minted from
    # the canonical id when the recipient was prepared) carries the person.
    person = {uid: uid for uid in users}
    person.update(
        s.exec(select(UserAlias.alias_id, UserAlias.canonical_id).where(col(UserAlias.canonical_id).in_(users))).all()
    )
    rows = s.exec(
        select(BroadcastRecipient).where(
            col(BroadcastRecipient.run_id).in_(runs), col(BroadcastRecipient.user_id).in_(person)
        )
    ).all()
    wanted = {j.id for j in batched}
    found: dict[str, BroadcastRecipient] = {}
    for rec in sorted(rows, key=lambda r: r.user_id not in users):  # the person's own rows first
        for uid in (rec.user_id, person[rec.user_id]):
            jid = batched_journey_id(rec.run_id, uid)
            if jid in wanted and jid not in found:
                found[jid] = rec
                break
    return found


def add_recipients(s: Session, run_id: str, shards: int, recipients: dict[str, list[dict[str, Any]]]) -> int:
    rows = [
        {
            "run_id": run_id,
            "user_id": uid,
            "shard": shard_of(uid, shards),
            "status": "pending",
            "items": items,
        }
        for uid, items in recipients.items()
    ]
    for i in range(0, len(rows), PAGE):
        insert_ignoring(s, BroadcastRecipient, rows[i : i + PAGE])
    return len(rows)


def _catalog(s: Session, section_id: str, skus: set[str]) -> dict[str, dict[str, Any]]:
    rows = s.exec(select(Product).where(Product.section_id == section_id, col(Product.sku).in_(skus))).all()
    return {p.sku: p.model_dump(exclude={"section_id", "updated_at"}) for p in rows}


def _item(sku: str, catalog: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    record = {k: v for k, v in product_record(sku, catalog).items() if k != "category"}
    record.update(extra)
    return record


def price_drop_recipients(
    s: Session, spec: CampaignSpec, section_id: str, sync_id: str
) -> dict[str, list[dict[str, Any]]]:
    """Users with a dropped-price product in their cart -> the dropped items (old and new price)."""
    rule = spec.price_drop
    drops: dict[str, tuple[Any, Any]] = {}
    for ch in s.exec(
        select(ProductChange).where(ProductChange.sync_id == sync_id, ProductChange.field == "price")
    ):
        if feed_rules.price_dropped(
            ch.old, ch.new, rule.min_amount if rule else None, rule.min_percent if rule else None
        ):
            drops[ch.sku] = (ch.old, ch.new)
    if not drops:
        return {}
    catalog = _catalog(s, section_id, set(drops))
    out: dict[str, list[dict[str, Any]]] = {}
    for user, in_cart in _cart_holders(s, section_id, set(drops)):
        if matches(spec.audience.conditions, user.attributes, spec.audience.match):
            out[user.id] = [_item(sku, catalog, old_price=drops[sku][0], price=drops[sku][1]) for sku in in_cart]
    return out


def _cart_holders(s: Session, section_id: str, skus: set[str]) -> Iterator[tuple[User, list[str]]]:
    """Users with any of `skus` in their cart, found through the cart index (not a scan of all
    users), with those SKUs in cart order."""
    found = cart_index.holders(s, section_id, skus)
    ids = sorted(found)
    for i in range(0, len(ids), PAGE):
        for user in s.exec(select(User).where(col(User.id).in_(ids[i : i + PAGE])).order_by(col(User.id))):
            in_cart = [str(item["productId"]) for item in user.cart if item.get("productId") in skus]
            if in_cart:  # the index and the cart are written together; this only guards the order
                yield user, in_cart


def _value_ok(conditions: list[Any], value: Any) -> bool:
    return matches([c.as_condition() for c in conditions], {"value": value})


def product_change_recipients(
    s: Session, spec: CampaignSpec, section_id: str, sync_id: str, as_of: datetime
) -> dict[str, list[dict[str, Any]]]:
    """Users who carted or viewed (last 30 days) a product whose attribute changed as configured."""
    rule = spec.attribute_change
    assert rule is not None
    changed: dict[str, tuple[Any, Any]] = {}
    for ch in s.exec(
        select(ProductChange).where(ProductChange.sync_id == sync_id, ProductChange.field == rule.attribute)
    ):
        if _value_ok(rule.old, ch.old) and _value_ok(rule.new, ch.new):
            changed[ch.sku] = (ch.old, ch.new)
    if not changed:
        return {}
    catalog = _catalog(s, section_id, set(changed))
    touched = {user.id: skus for user, skus in _cart_holders(s, section_id, set(changed))}
    since = as_of - VIEW_LOOKBACK
    views = s.exec(
        select(Event.user_id, Event.data).where(
            Event.section_id == section_id, Event.kind == "product_view", col(Event.received_at) >= since
        )
    )
    for user_id, data in views:
        sku = str((data or {}).get("sku"))
        if sku in changed and sku not in touched.get(user_id, []):
            touched.setdefault(user_id, []).append(sku)
    out: dict[str, list[dict[str, Any]]] = {}
    for user_id, skus in touched.items():
        person = s.get(User, user_id)
        if person is None or s.get(UserAlias, user_id) is not None:
            continue
        if matches(spec.audience.conditions, person.attributes, spec.audience.match):
            out[user_id] = [
                _item(sku, catalog, old_value=changed[sku][0], new_value=changed[sku][1]) for sku in skus
            ]
    return out


def user_change_recipients(s: Session, spec: CampaignSpec, sync_id: str) -> dict[str, list[dict[str, Any]]]:
    """Users whose attribute changed between two user-data syncs as configured (old -> new)."""
    rule = spec.attribute_change
    assert rule is not None
    out: dict[str, list[dict[str, Any]]] = {}
    rows = s.exec(
        select(UserAttributeChange).where(
            UserAttributeChange.sync_id == sync_id, UserAttributeChange.attribute == rule.attribute
        )
    )
    for ch in rows:
        if not (_value_ok(rule.old, ch.old) and _value_ok(rule.new, ch.new)):
            continue
        user = s.get(User, ch.user_id)
        if user is not None and matches(spec.audience.conditions, user.attributes, spec.audience.match):
            out[ch.user_id] = [{"attribute": rule.attribute, "old_value": ch.old, "new_value": ch.new}]
    return out
