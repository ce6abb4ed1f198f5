"""Recommendation strategies and user-data variables."""

from __future__ import annotations

from domain import recommend
from domain.render import RenderContext, render_payload

CATALOG = {
    "cart": {"categories": ["shoes"]},
    "s-top": {"categories": ["shoes"]},
    "s-low": {"categories": ["shoes"]},
    "s-out": {"categories": ["shoes"], "in_stock": False},
    "hat": {"categories": ["hats"]},
}
SCORE = recommend.popularity([("purchase", ["hat"]), ("product_view", ["s-top", "s-low"]), ("add_to_cart", ["s-top"]),
                              ("purchase", ["cart"]), ("purchase", ["s-out"]), ("page_view", ["s-low"])])  # fmt: skip


def test_popular_ranks_by_weighted_activity_excluding_cart_and_out_of_stock() -> None:
    """Purchases weigh 3, add-to-carts 2, views 1; cart items and out-of-stock products are left out."""
    assert recommend.popular(SCORE, CATALOG, {"cart"}, 10) == ["hat", "s-top", "s-low"]


def test_similar_shares_a_category_with_the_trigger_items() -> None:
    """Similar items: same category as a trigger item, by popularity, without the cart."""
    trigger = [{"sku": "cart", "categories": ["shoes"]}]
    assert recommend.similar(SCORE, CATALOG, trigger, {"cart"}, 10) == ["s-top", "s-low"]
    assert recommend.similar(SCORE, CATALOG, [{"sku": "x"}], set(), 10) == []


def test_user_data_and_recommendation_variables_render() -> None:
    """`${User data|feed|prop}` reads nested or flat attributes; recommendations render by index."""
    ctx = RenderContext(user_identifier="u", campaign_name="c", variation_name="v", step_name="s", channel="email",
                        user_attributes={"crm": {"tier": "gold"}, "points": 120},
                        recommendations={"similar": [{"sku": "s-top", "name": "Top"}]})  # fmt: skip
    out = render_payload({"t": "${User data|crm|tier}", "p": "${User data|loyalty|points}",
                          "r": "${Recommendations|similar|name|item1}", "r2": "${Recommendations|popular|name|item1}"}, ctx)  # fmt: skip
    assert out == {"t": "gold", "p": 120, "r": "Top", "r2": ""}
