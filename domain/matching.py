"""Which campaigns an event triggers or exits: the pure rules, no I/O.

Trigger conditions on product campaigns hold when at least one product of the triggering
event (the cart after a cart event, the viewed product) satisfies them. Product records merge
the event's item (SKU, price, quantity) over the catalog's attributes, so conditions can use
`category`, `price`, `brand` or any feed column.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from domain.campaign import CampaignSpec, CampaignType, ExitRule
from domain.conditions import matches
from domain.events import CART_KINDS, CartItem, EventKind, NormalizedEvent

ProductRecord = dict[str, Any]
Catalog = Mapping[str, Mapping[str, Any]]  # sku -> product attributes
CART_NO_LONGER_MATCHES = "cart_no_longer_matches"
# Exit rules a purchase matches; `purchase_of_trigger_item` is then narrowed by the journey to its items.
PURCHASE_EXIT_RULES = frozenset({"purchase", "purchase_of_trigger_item"})


def product_record(sku: str, catalog: Catalog, item: CartItem | None = None) -> ProductRecord:
    product = dict(catalog.get(sku, {}))
    attrs = product.pop("attributes", None) or {}
    record: ProductRecord = {**attrs, **product, "sku": sku}
    categories = record.get("categories") or []
    record["categories"] = categories
    record["category"] = categories
    if item is not None:
        record["quantity"] = item.quantity
        if item.itemPrice is not None:
            record["price"] = item.itemPrice
        if item.size:
            record["size"] = item.size
    return record


def event_products(event: NormalizedEvent, cart: Sequence[CartItem]) -> list[CartItem]:
    """The products of a triggering event: the cart after a cart event, the items bought, the
    viewed product, else the products a custom (or other standard) event names (`productId`,
    `cart` lines: `domain.events.named_products`)."""
    if event.kind in CART_KINDS:
        return list(cart)
    if event.kind == EventKind.PURCHASE:
        return list(event.cart or [])
    if event.sku:
        return [CartItem(productId=event.sku)]
    return list(event.items or [])


def event_catalog_skus(event: NormalizedEvent, cart: Sequence[CartItem]) -> set[str]:
    """Every SKU deciding this event's triggers and exits may look up in the catalog."""
    named = [*cart, *(event.cart or []), *(event.items or [])]
    return {i.sku for i in named} | ({event.sku} if event.sku else set())


def trigger_products(event: NormalizedEvent, cart: Sequence[CartItem], catalog: Catalog) -> list[ProductRecord]:
    """The products a trigger condition is evaluated on."""
    return [product_record(i.sku, catalog, i) for i in event_products(event, cart)]


def _custom_trigger_records(event: NormalizedEvent, cart: Sequence[CartItem], catalog: Catalog) -> list[ProductRecord]:
    """What a custom trigger's conditions test: each product of the event over the event's properties
    (the seeds: conditions of event-based triggers are on the event's products; a condition on a
    property still reads it, as sent: `NormalizedEvent.sent_properties`, not the stored hashes), or
    the properties alone for an event that names no product."""
    products = trigger_products(event, cart, catalog)
    sent = event.sent_properties
    return [{**sent, **p} for p in products] or [sent]


def same_event_name(sent: str, configured: str | None) -> bool:
    """Event names match ignoring case, surrounding spaces and Unicode composition: a backend's
    "Called support " or a decomposed "Café" (e + combining accent) is the campaign's name."""

    def key(name: str) -> str:
        return unicodedata.normalize("NFC", name).strip().casefold()

    return configured is not None and key(sent) == key(configured)


def reads_catalog(spec: CampaignSpec) -> bool:
    """Whether deciding this campaign's triggers and exits can look at product data: only its
    conditions do (ingestion skips the catalog lookup when no live campaign has any)."""
    return bool(spec.trigger.conditions) or any(rule.conditions for rule in spec.exits)


def triggers(spec: CampaignSpec, event: NormalizedEvent, cart: Sequence[CartItem], catalog: Catalog) -> bool:
    """Does this event start (or re-trigger) a journey of the campaign?"""
    trig = spec.trigger
    match spec.type:
        case CampaignType.CART_ABANDONMENT:
            if event.kind not in CART_KINDS or not cart:
                return False
            return any(matches(trig.conditions, p, trig.match) for p in trigger_products(event, cart, catalog))
        case CampaignType.PRODUCT_VIEW:
            if event.kind != EventKind.PRODUCT_VIEW:
                return False
            return any(matches(trig.conditions, p, trig.match) for p in trigger_products(event, cart, catalog))
        case CampaignType.CUSTOM_TRIGGER:
            # Any event posted by name, standard (purchase, add-to-cart...) or not (docs/campaigns.md);
            # pageviews are not: their names ("Product View") are made up here, not sent.
            if event.kind in {EventKind.PRODUCT_VIEW, EventKind.PAGE_VIEW}:
                return False
            if not same_event_name(event.name, trig.event_name):
                return False
            return any(matches(trig.conditions, r, trig.match) for r in _custom_trigger_records(event, cart, catalog))
    return False


def exit_reason(
    spec: CampaignSpec, event: NormalizedEvent, cart: Sequence[CartItem], catalog: Catalog
) -> str | None:
    """Why this event ends the user's journey of this campaign, or None.

    Rules needing the journey's own trigger items (purchase of a trigger item) are reported as
    `purchase_of_trigger_item` and decided by the journey, which knows its items.
    """
    if spec.type == CampaignType.CART_ABANDONMENT:
        if event.kind == EventKind.PURCHASE:
            return "purchased"
        if event.kind in CART_KINDS and not cart:
            return "cart_emptied"
        # The items that made the cart qualify were removed (a Shoes campaign, a cart of socks now):
        # the journey would remind the user of a cart its trigger conditions no longer hold for.
        if event.kind in CART_KINDS and spec.trigger.conditions and not triggers(spec, event, cart, catalog):
            return CART_NO_LONGER_MATCHES
    for rule in spec.exits:
        if _exit_rule_matches(rule, event, catalog):
            return rule.event if rule.event != "custom" else f"custom:{rule.event_name}"
    return None


def exits_at_merge(spec: CampaignSpec) -> bool:
    """Whether a journey of this campaign that a merge moves to a person can owe an exit for what the
    person did meanwhile (`exit_at_merge`): a cart journey, or any exiting on a purchase."""
    return spec.type == CampaignType.CART_ABANDONMENT or any(r.event in PURCHASE_EXIT_RULES for r in spec.exits)


def exit_at_merge(
    spec: CampaignSpec, cart_is_empty: bool, purchases: Sequence[NormalizedEvent], catalog: Catalog
) -> tuple[str, list[str]] | None:
    """Why a journey a merge moved to a person ends, given the person's purchases since the journey's
    trigger (oldest first) and whether the merged cart is empty, with the SKUs the exit names; None
    when it runs on.

    Unlike `exit_reason`, which sees one event as it comes, this sees the outcome: a cart journey
    ends only when the merged cart is empty (a purchase on one device followed by carting again
    on the other keeps the journey: the person has a cart to be reminded of)."""
    if spec.type == CampaignType.CART_ABANDONMENT:
        if not cart_is_empty:
            return None
        if not purchases:
            return "cart_emptied", []
        return "purchased", [i.sku for i in purchases[-1].cart or []]
    for event in purchases:
        reason = exit_reason(spec, event, [], catalog)
        if reason is not None:
            return reason, [i.sku for i in event.cart or []]
    return None


def _exit_rule_matches(rule: ExitRule, event: NormalizedEvent, catalog: Catalog) -> bool:
    if rule.event in PURCHASE_EXIT_RULES:
        if event.kind != EventKind.PURCHASE:
            return False
        if not rule.conditions:
            return True
        items = event.cart or []
        return any(matches(rule.conditions, product_record(i.sku, catalog, i), rule.match) for i in items)
    match rule.event:
        case "add_to_cart":
            if event.kind != EventKind.ADD_TO_CART or not event.sku:
                return False
            return matches(rule.conditions, product_record(event.sku, catalog), rule.match)
        case "product_view":
            if event.kind != EventKind.PRODUCT_VIEW or not event.sku:
                return False
            return matches(rule.conditions, product_record(event.sku, catalog), rule.match)
        case "custom":
            if not same_event_name(event.name, rule.event_name):
                return False
            return matches(rule.conditions, event.sent_properties, rule.match)  # as sent, not as stored
    return False


def event_skus(event: NormalizedEvent, cart: Sequence[CartItem]) -> list[str]:
    """SKUs a trigger contributes to the journey's context, its trigger items (deduplicated, in order)."""
    return list(dict.fromkeys(i.sku for i in event_products(event, cart)))
