"""A custom trigger's products (pure rules): what a custom event names, and what its conditions test."""

from __future__ import annotations

from typing import Any

from domain.campaign import CampaignSpec
from domain.events import EventIn, named_products, normalize_event
from domain.matching import event_catalog_skus, event_skus, triggers

CATALOG = {"shoe": {"sku": "shoe", "categories": ["Shoes"]}, "sock": {"sku": "sock", "categories": ["Socks"]}}


def _spec(conditions: list[dict[str, Any]]) -> CampaignSpec:
    return CampaignSpec.model_validate({
        "name": "Wishlist", "type": "custom_trigger", "channel_priority": ["email"],
        "trigger": {"wait": "PT1H", "event_name": "Wished", "conditions": conditions},
        "variations": [{"id": "a", "name": "A", "share": 100, "steps": [{"name": "s", "messages": {"email": {}}}]}],
    })  # fmt: skip


def test_a_custom_event_names_products_as_standard_events_do_and_nothing_else_is_a_product() -> None:
    assert [i.sku for i in named_products({"productId": "shoe", "cart": [{"productId": "sock"}]}) or []] == [
        "shoe", "sock"]  # fmt: skip
    # Custom events accept any properties: what is not a product line is ignored, never a 422.
    assert named_products({"cart": "mobile", "productId": 7.5}) is None
    assert named_products({"productId": True}) is None
    # A numeric SKU is one, as a standard event's `productId` is (read as its decimal string).
    assert [i.sku for i in named_products({"productId": 7, "cart": [{"productId": 8}]}) or []] == ["7", "8"]
    lines = [{"productId": " "}, {"sku": "x"}, {"productId": "ok"}]
    assert [i.sku for i in named_products({"cart": lines}) or []] == ["ok"]
    ev = normalize_event(0, EventIn(name="Wished", properties={"productId": "shoe", "cart": [{"quantity": "x"}]}))
    assert event_skus(ev, []) == ["shoe"] and event_catalog_skus(ev, []) == {"shoe"}


def test_custom_trigger_conditions_hold_on_a_product_and_still_read_the_properties() -> None:
    is_shoe = {"field": "category", "op": "eq", "value": "Shoes"}
    is_gold = {"field": "tier", "op": "eq", "value": "gold"}
    shoes, gold_shoes, tier = _spec([is_shoe]), _spec([is_shoe, is_gold]), _spec([is_gold])

    def event(**props: Any) -> Any:
        return normalize_event(0, EventIn(name="Wished", properties=props))

    assert triggers(shoes, event(cart=[{"productId": "sock"}, {"productId": "shoe"}]), [], CATALOG)
    assert not triggers(shoes, event(productId="sock"), [], CATALOG)
    assert triggers(gold_shoes, event(productId="shoe", tier="gold"), [], CATALOG)
    assert not triggers(gold_shoes, event(productId="shoe", tier="silver"), [], CATALOG)
    assert triggers(tier, event(tier="gold"), [], CATALOG)  # no product: the properties, as before
    assert triggers(tier, event(tier="gold", productId="sock"), [], CATALOG)
