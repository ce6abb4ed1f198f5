"""Recommendation strategies for messages: pure ranking over products and recent activity.

"popular": products ranked by recent purchases (weight 3), add-to-carts (2) and views (1).
"similar": products sharing a category with the trigger items, ranked by the same popularity.
Both exclude the trigger items (the cart) and products known to be out of stock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WEIGHTS = {"purchase": 3, "add_to_cart": 2, "product_view": 1}


def popularity(activity: Iterable[tuple[str, Sequence[str]]]) -> Counter[str]:
    """activity: (event kind, skus of the event) pairs."""
    score: Counter[str] = Counter()
    for kind, skus in activity:
        for sku in skus:
            score[sku] += WEIGHTS.get(kind, 0)
    return score


def popular(score: Counter[str], catalog: Mapping[str, Mapping[str, Any]], exclude: set[str], limit: int) -> list[str]:
    ranked = [sku for sku, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))]
    return [s for s in ranked if s not in exclude and s in catalog and catalog[s].get("in_stock") is not False][:limit]


def similar(
    score: Counter[str], catalog: Mapping[str, Mapping[str, Any]], trigger: Sequence[Mapping[str, Any]],
    exclude: set[str], limit: int,
) -> list[str]:  # fmt: skip
    wanted = {c for item in trigger for c in (item.get("categories") or [])}
    if not wanted:
        return []
    candidates = [
        sku for sku, p in catalog.items()
        if sku not in exclude and p.get("in_stock") is not False and wanted & set(p.get("categories") or [])
    ]  # fmt: skip
    return sorted(candidates, key=lambda s: (-score.get(s, 0), s))[:limit]
