"""Pure rules: conditions, caps, campaign priority, channel choice, trigger/exit matching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from domain.campaign import STORED, CampaignSpec, Channel
from domain.caps import CapPolicy, Competitor, cap_reason, outranked_by
from domain.channels import choose_channel
from domain.conditions import Condition, matches
from domain.events import EventIn, EventValidationError, NormalizedEvent, normalize_event
from domain.matching import exit_at_merge, exit_reason, exits_at_merge, triggers

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cond", "record", "expected"),
    [
        ({"field": "category", "op": "eq", "value": "shoes"}, {"category": ["Shoes", "Men"]}, True),
        ({"field": "price", "op": "gt", "value": 50}, {"price": 49.99}, False),
        ({"field": "price", "op": "gte", "value": 50}, {"price": "50"}, True),
        ({"field": "brand", "op": "in", "value": ["acme", "zeta"]}, {"brand": "ACME"}, True),
        ({"field": "brand", "op": "ne", "value": "acme"}, {}, True),
        ({"field": "color", "op": "exists"}, {"color": None}, False),
        ({"field": "attributes.size", "op": "eq", "value": "m"}, {"attributes": {"size": "M"}}, True),
        ({"field": "name", "op": "contains", "value": "dress"}, {"name": "Little Red Dress"}, True),
    ],
)
def test_condition_evaluation(cond: dict[str, object], record: dict[str, object], expected: bool) -> None:
    """Each operator compares case-insensitively, numerically where numbers, over list values."""
    assert matches([Condition.model_validate(cond)], record) is expected


def test_condition_rejects_mistyped_values() -> None:
    """A numeric operator with a text value is a validation error, not a silent mismatch."""
    with pytest.raises(ValidationError, match="must be a number"):
        Condition(field="price", op="gt", value="cheap")


def test_global_and_campaign_caps() -> None:
    """The 6th message in the window hits the global cap; the campaign cap is checked too."""
    policy = CapPolicy(5, timedelta(hours=24))
    assert cap_reason(global_policy=policy, global_used=4, campaign_limit=None, campaign_used=0) is None
    assert cap_reason(global_policy=policy, global_used=5, campaign_limit=None, campaign_used=0) == "global_cap"
    assert cap_reason(global_policy=policy, global_used=1, campaign_limit=1, campaign_used=1) == "campaign_cap"


def test_priority_rule() -> None:
    """Strictly higher priority outranks when pending or recently sent; equal never does."""
    window = timedelta(hours=24)
    pending = Competitor("hi", 90, True, T0, None)
    assert outranked_by(priority=10, competitors=[pending], as_of=T0 + timedelta(hours=1), window=window) == pending
    assert outranked_by(priority=90, competitors=[pending], as_of=T0, window=window) is None
    stale = Competitor("hi", 90, True, T0, None)
    assert outranked_by(priority=10, competitors=[stale], as_of=T0 + timedelta(days=2), window=window) is None
    done_recently = Competitor("hi", 90, False, T0, T0 + timedelta(hours=2))
    assert outranked_by(priority=10, competitors=[done_recently], as_of=T0 + timedelta(hours=3), window=window)
    done_silently = Competitor("hi", 90, False, T0, None)
    assert outranked_by(priority=10, competitors=[done_silently], as_of=T0, window=window) is None


def test_channel_priority_skips_unreachable_channels() -> None:
    """The first reachable channel in campaign priority wins; otherwise the best reason is given."""
    prio = [Channel.SMS, Channel.EMAIL]
    steps = [Channel.EMAIL, Channel.SMS]
    assert choose_channel(prio, steps, {}).channel == Channel.SMS
    assert choose_channel(prio, steps, {Channel.SMS: "not_opted_in"}).channel == Channel.EMAIL
    none = choose_channel(prio, steps, {Channel.SMS: "no_identifier", Channel.EMAIL: "not_opted_in"})
    assert none.channel is None and none.reason == "not_opted_in"
    assert choose_channel(prio, steps, {}, exclude=[Channel.SMS]).channel == Channel.EMAIL


def _spec(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "c", "type": "cart_abandonment", "channel_priority": ["email"],
        "trigger": {"wait": "PT1H", "conditions": [{"field": "category", "op": "eq", "value": "shoes"}]},
        "variations": [{"id": "a", "name": "A", "share": 100, "steps": [{"name": "s", "messages": {"email": {}}}]}],
    }  # fmt: skip
    base.update(over)
    return base


def test_cart_trigger_uses_catalog_attributes_and_exit_rules() -> None:
    """Cart triggers match on catalog categories; purchases and emptied carts exit."""
    spec = CampaignSpec.model_validate(_spec())
    ev = normalize_event(0, EventIn(name="Add", properties={
        "dyType": "add-to-cart-v1", "value": 5, "productId": "s1", "quantity": 1,
        "cart": [{"productId": "s1", "quantity": 1, "itemPrice": 5}]}))  # fmt: skip
    assert ev.cart is not None
    assert triggers(spec, ev, ev.cart, {"s1": {"categories": ["Shoes"]}})
    assert not triggers(spec, ev, ev.cart, {"s1": {"categories": ["Hats"]}})
    empty = normalize_event(0, EventIn(name="Sync", properties={"dyType": "sync-cart-v1", "value": 0, "cart": []}))
    assert exit_reason(spec, empty, [], {}) == "cart_emptied"


def test_cart_that_no_longer_matches_exits() -> None:
    """A cart event leaving only items outside the trigger conditions ends the journey; a cart that
    still holds a matching item, or a campaign without conditions, does not."""
    spec = CampaignSpec.model_validate(_spec())
    catalog = {"shoe": {"categories": ["Shoes"]}, "sock": {"categories": ["Socks"]}}
    socks = normalize_event(0, EventIn(name="Sync", properties={
        "dyType": "sync-cart-v1", "value": 2, "cart": [{"productId": "sock", "quantity": 1, "itemPrice": 2}]}))  # fmt: skip
    both = normalize_event(0, EventIn(name="Sync", properties={"dyType": "sync-cart-v1", "value": 7, "cart": [
        {"productId": "sock", "quantity": 1, "itemPrice": 2}, {"productId": "shoe", "quantity": 1, "itemPrice": 5}]}))  # fmt: skip
    assert socks.cart is not None and both.cart is not None
    assert exit_reason(spec, socks, socks.cart, catalog) == "cart_no_longer_matches"
    assert exit_reason(spec, both, both.cart, catalog) is None
    unconditioned = CampaignSpec.model_validate({**_spec(), "trigger": {"wait": "PT1H"}})
    assert exit_reason(unconditioned, socks, socks.cart, catalog) is None


def _purchase(*skus: str) -> NormalizedEvent:
    cart = [{"productId": sku, "quantity": 1, "itemPrice": 5} for sku in skus]
    return normalize_event(0, EventIn(name="Buy", properties={"dyType": "purchase-v1", "value": 5, "cart": cart}))


def test_a_moved_journey_exits_at_a_merge_for_what_the_person_did_meanwhile() -> None:
    """At a merge a cart journey ends only on an empty merged cart (purchased when the person bought,
    naming the last purchase's items); a product-view journey ends on the first purchase its exit
    rule matches; a campaign exiting on nothing a merge can show owes nothing."""
    cart_spec = CampaignSpec.model_validate(_spec())
    assert exits_at_merge(cart_spec)
    assert exit_at_merge(cart_spec, True, [_purchase("a"), _purchase("b")], {}) == ("purchased", ["b"])
    assert exit_at_merge(cart_spec, True, [], {}) == ("cart_emptied", [])
    assert exit_at_merge(cart_spec, False, [_purchase("a")], {}) is None  # carted again after buying
    shoes = [{"field": "category", "op": "eq", "value": "shoes"}]
    view = CampaignSpec.model_validate({**_spec(), "type": "product_view", "trigger": {"wait": "PT1H"},
                                        "exits": [{"event": "purchase", "conditions": shoes}]})  # fmt: skip
    catalog = {"shoe": {"categories": ["Shoes"]}, "sock": {"categories": ["Socks"]}}
    assert exits_at_merge(view)
    assert exit_at_merge(view, True, [_purchase("sock")], catalog) is None
    assert exit_at_merge(view, False, [_purchase("sock"), _purchase("shoe")], catalog) == ("purchase", ["shoe"])
    on_trigger_item = CampaignSpec.model_validate({**_spec(), "type": "product_view", "trigger": {"wait": "PT1H"},
                                                   "exits": [{"event": "purchase_of_trigger_item"}]})  # fmt: skip
    assert exit_at_merge(on_trigger_item, True, [_purchase("x")], {}) == ("purchase_of_trigger_item", ["x"])
    viewing = CampaignSpec.model_validate({**_spec(), "type": "product_view", "trigger": {"wait": "PT1H"},
                                           "exits": [{"event": "product_view"}]})  # fmt: skip
    assert not exits_at_merge(viewing)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"trigger": {"wait": "PT1M"}}, "trigger.wait"),
        ({"trigger": {"wait": "P91D"}}, "trigger.wait"),
        ({"channel_priority": ["email", "email"]}, "channel_priority"),
        ({"type": "custom_trigger"}, "event_name"),
        ({"variations": [{"id": "a", "name": "A", "share": 60, "steps": [{"name": "s", "messages": {"email": {}}}]}]}, "sum to 100"),
        ({"variations": [{"id": "a", "name": "A", "share": 100, "steps": [{"name": f"s{i}", "messages": {"email": {}}, **({"wait": "PT1H"} if i else {})} for i in range(11)]}]}, "variations.0.steps"),
        ({"channel_priority": ["sms"]}, "not listed in channel_priority"),
        ({"schedule": {"recurring": True, "time_of_day": "10:00"}}, "schedule"),
        ({"throttle_per_second": 5}, "throttle_per_second"),
        ({"price_drop": {"min_percent": 10}}, "price_drop"),
        ({"trigger": {"wait": "PT1H", "event_name": "Added"}}, "trigger.event_name"),
    ],
)
def test_bad_specs_name_the_field(change: dict[str, object], field: str) -> None:
    """Invalid campaign specs are rejected with the offending field in the error."""
    with pytest.raises(ValidationError) as err:
        CampaignSpec.model_validate(_spec(**change))
    text = str(err.value).replace("\n", " ")
    assert field in text, text


def test_standard_events_validated_with_field_location() -> None:
    """A sync-cart without its cart names events.N.properties.cart."""
    with pytest.raises(EventValidationError) as err:
        normalize_event(3, EventIn(name="Sync", properties={"dyType": "sync-cart-v1", "value": 1}))
    assert err.value.place == "events.3.properties.cart"


def test_event_names_match_ignoring_case_spaces_and_composition() -> None:
    spec = CampaignSpec.model_validate(_spec(type="custom_trigger", trigger={"wait": "PT1H", "event_name": "Café visit"}))
    for sent, expected in [("café VISIT", True), (" Cafe\u0301 visit\t", True), ("Cafe visit", False)]:
        ev = normalize_event(0, EventIn(name=sent, properties={}))
        assert triggers(spec, ev, [], {}) is expected, sent


def test_batched_fields_of_a_stored_triggered_spec_still_load() -> None:
    """Saved before triggered campaigns refused them: a journey in flight must still load its spec."""
    spec = CampaignSpec.model_validate(_spec(throttle_per_second=5), context={STORED: True})
    assert spec.throttle_per_second == 5
