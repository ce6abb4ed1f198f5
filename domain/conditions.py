"""Conditions on products, event properties and user attributes, and their evaluation.

One small language serves triggers ("a product in the cart has category Shoes and price > 50"),
exits and audiences ("tier is gold"). A condition reads one field of a flat record; nested
attributes use dots (`attributes.color`). Unknown fields evaluate as missing, never as errors:
events and feeds are open-ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Operator = Literal[
    "eq", "ne", "in", "not_in", "contains", "not_contains", "starts_with",
    "gt", "gte", "lt", "lte", "exists", "not_exists",
]  # fmt: skip

_NUMERIC_OPS = {"gt", "gte", "lt", "lte"}
_LIST_OPS = {"in", "not_in"}
_NO_VALUE_OPS = {"exists", "not_exists"}


class Condition(BaseModel):
    """`field op value`, e.g. {"field": "price", "op": "gt", "value": 50}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(min_length=1, max_length=200)
    op: Operator = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in _NO_VALUE_OPS:
            return self
        if self.value is None:
            raise ValueError(f"value is required for op '{self.op}'")
        if self.op in _NUMERIC_OPS and (isinstance(self.value, bool) or not isinstance(self.value, int | float)):
            raise ValueError(f"value must be a number for op '{self.op}'")
        if self.op in _LIST_OPS and not isinstance(self.value, list):
            raise ValueError(f"value must be a list for op '{self.op}'")
        return self


_MISSING = object()


def lookup(record: Mapping[str, Any], field: str) -> Any:
    """Read `field` from `record`, following dots into nested mappings."""
    if field in record:
        return record[field]
    current: Any = record
    for part in field.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        else:
            return _MISSING
    return current


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _norm(v: Any) -> Any:
    """Compare strings case-insensitively and numbers as numbers."""
    if isinstance(v, str):
        n = _as_number(v)
        return n if n is not None else v.casefold()
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return v


def _values(actual: Any) -> list[Any]:
    """A field may hold one value or a list (categories); comparisons hold if any element matches."""
    return list(actual) if isinstance(actual, list | tuple) else [actual]


def evaluate(cond: Condition, record: Mapping[str, Any]) -> bool:
    actual = lookup(record, cond.field)
    if cond.op == "exists":
        return actual is not _MISSING and actual is not None
    if cond.op == "not_exists":
        return actual is _MISSING or actual is None
    if actual is _MISSING or actual is None:
        return cond.op in {"ne", "not_in", "not_contains"}
    values = _values(actual)
    match cond.op:
        case "eq":
            return any(_norm(a) == _norm(cond.value) for a in values)
        case "ne":
            return all(_norm(a) != _norm(cond.value) for a in values)
        case "in":
            wanted = [_norm(x) for x in cond.value]
            return any(_norm(a) in wanted for a in values)
        case "not_in":
            wanted = [_norm(x) for x in cond.value]
            return all(_norm(a) not in wanted for a in values)
        case "contains":
            needle = str(cond.value).casefold()
            return any(needle in str(a).casefold() for a in values)
        case "not_contains":
            needle = str(cond.value).casefold()
            return all(needle not in str(a).casefold() for a in values)
        case "starts_with":
            prefix = str(cond.value).casefold()
            return any(str(a).casefold().startswith(prefix) for a in values)
        case "gt" | "gte" | "lt" | "lte":
            return any(_compare(cond.op, _as_number(a), float(cond.value)) for a in values)
    return False


def _compare(op: str, a: float | None, b: float) -> bool:
    if a is None:
        return False
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


def matches(conditions: Iterable[Condition], record: Mapping[str, Any], how: Literal["all", "any"] = "all") -> bool:
    """True when the record satisfies the conditions (an empty list always matches)."""
    conds = list(conditions)
    if not conds:
        return True
    results = (evaluate(c, record) for c in conds)
    return all(results) if how == "all" else any(results)
