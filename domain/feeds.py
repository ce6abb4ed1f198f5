"""Feed CSV rules: parsing a product or user row, and what changed between two syncs.

Product columns: `sku` (required), `name`, `url`, `price`, `image_url` (or `image`),
`categories` (`|`-separated), `in_stock` (true/false/1/0/yes/no), localized columns
`lng:<locale>:<field>` (kept under `attributes.lng.<locale>.<field>`), and any other column
as an attribute (numbers stay numbers). A row sets only the columns its file has: `merge_product`
keeps the stored value of every column left out, and a present but empty cell clears its value.
User rows: a `cuid` column and attribute columns.
A number is a plain decimal (`42`, `-3.5`, `1e6`); anything else stays text: a code with a
leading zero (`01234`, a ZIP code keeps its zero), digits with `_` or other scripts' digits.
A number no float can hold (`1e400`, or a price of `inf`/`nan`) rejects its row; in an attribute
column `nan`/`inf`/`infinity` are words and stay text.
A cell holding a NUL (or a lone surrogate) rejects its row naming the column, a column name holding
one the file: no database text or JSONB can keep it (`domain/text.py`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from domain.text import unstorable_reason

BOOLS = {"true": True, "1": True, "yes": True, "y": True, "false": False, "0": False, "no": False, "n": False}
PRODUCT_FIELDS = ("name", "url", "image_url", "price", "in_stock", "categories")
# What a feed cell must look like to be read as a number; Python's float() also takes "1_000",
# " ٣ " and "01234", which in a CSV are a typo, another script and a code.
NUMBER = re.compile(r"[+-]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|[+-]?\.[0-9]+")
INTEGER = re.compile(r"[+-]?(0|[1-9][0-9]*)")
PRICE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # a price is a number: "007.50" too


class _BadCell(ValueError):
    """A cell that rejects its row; the message is the reason recorded for the line."""


def _scalar(name: str, raw: str) -> Any:
    """Attribute values: numbers as numbers, the rest as trimmed text."""
    text = raw.strip()
    if not NUMBER.fullmatch(text):
        return text  # words ("NaN", "Inf": someone called Nan), codes, typos
    number = float(text)
    if not math.isfinite(number):
        # Stored, an overflowing number is inf: null in messages, a 500 wherever it is rendered as JSON.
        raise _BadCell(f"{name} '{text[:20]}' is too large for a number")
    if INTEGER.fullmatch(text):
        return int(text)  # exact (a float would round an 18-digit id); within the float range, as checked
    return int(number) if number.is_integer() and "." not in text else number


def header_error(kind: str, header: list[str]) -> str | None:
    names = [h.strip() for h in header]
    key = "sku" if kind == "product" else "cuid"
    if key not in names:
        return f"the header has no '{key}' column"
    if len(set(names)) != len(names):
        return "the header repeats a column"
    if any(not n for n in names):
        return "the header has an empty column name"
    for i, name in enumerate(names):
        # Every row's attribute would be keyed by it: the file, not a row, is wrong.
        bad = unstorable_reason(f"the header's column {i + 1}", name)
        if bad:
            return bad
    return None


def _unstorable_cell(header: list[str], cells: list[str]) -> str | None:
    """Why a row cannot be kept because one of its cells holds NUL or a lone surrogate, or None.
    Checked before any rule that quotes a cell, so no reason carries the character."""
    for name, cell in zip(header, cells, strict=True):
        bad = unstorable_reason(name, cell)
        if bad:
            return bad
    return None


def parse_product(header: list[str], cells: list[str]) -> dict[str, Any] | str:
    """The product fields and attributes of one row (only the file's columns), or why the row is rejected.

    An empty attribute cell is kept as None: it clears that attribute when the row is merged.
    """
    if len(cells) != len(header):
        return f"expected {len(header)} columns, got {len(cells)}"
    unstorable = _unstorable_cell(header, cells)
    if unstorable:
        return unstorable
    row = {h.strip(): c for h, c in zip(header, cells, strict=True)}
    sku = row.pop("sku").strip()
    if not sku or len(sku) > 256:
        return "sku is empty or longer than 256 characters"
    # No default for a field: an absent column must not look like "set to nothing" (see merge_product).
    out: dict[str, Any] = {"sku": sku, "attributes": {}}
    if "image" in row and "image_url" not in row:
        row["image_url"] = row.pop("image")
    for name, raw in row.items():
        value = raw.strip()
        if name == "price":
            if value == "":
                out["price"] = None
                continue
            if not PRICE.fullmatch(value) and value.lower().lstrip("+-") not in ("inf", "infinity", "nan"):
                return f"price '{value[:20]}' is not a number"
            out["price"] = float(value)
            if not math.isfinite(out["price"]):  # float() reads "inf", "nan" and "1e400" too
                return f"price '{value[:20]}' is not a finite number"
            if out["price"] < 0:
                return "price is negative"
        elif name == "in_stock":
            if value == "":
                out["in_stock"] = None
            elif value.lower() in BOOLS:
                out["in_stock"] = BOOLS[value.lower()]
            else:
                return f"in_stock '{value[:20]}' is not true/false"
        elif name == "categories":
            out["categories"] = [c.strip() for c in value.split("|") if c.strip()]
        elif name in ("name", "url", "image_url"):
            out[name] = value or None
        elif name.startswith("lng:"):
            parts = name.split(":", 2)
            if len(parts) != 3 or not parts[1] or not parts[2]:
                return f"localized column '{name}' must look like lng:fr_FR:name"
            out["attributes"].setdefault("lng", {}).setdefault(parts[1], {})[parts[2]] = value
        elif value == "":
            out["attributes"][name] = None  # the column is there, empty: clear the attribute
        else:
            try:
                out["attributes"][name] = _scalar(name, value)
            except _BadCell as exc:
                return str(exc)
    return out


def merge_product(old: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
    """The product after a feed row (`parse_product`): the row's columns over the stored product.

    Columns are what a row speaks for, in a full feed too (full says which products exist, not which
    columns): a field, attribute or translation whose column the file leaves out keeps its stored value.
    An empty attribute cell (None) removes the attribute; an empty `lng:` cell stores "" (no translation,
    the default text is used). Being listed clears the `removed` mark of a full feed (unless the row sets it).
    """
    base = old or {}
    out: dict[str, Any] = {name: row[name] if name in row else base.get(name) for name in PRODUCT_FIELDS}
    out["categories"] = list(out["categories"] or [])
    attributes = dict(base.get("attributes") or {})
    attributes.pop("removed", None)
    for name, value in (row.get("attributes") or {}).items():
        if name == "lng" and isinstance(value, dict):
            attributes["lng"] = _merge_translations(attributes.get("lng"), value)
        elif value is None:
            attributes.pop(name, None)
        else:
            attributes[name] = value
    out["attributes"] = attributes
    return out


def _merge_translations(old: Any, new: dict[str, Any]) -> dict[str, Any]:
    """Stored `lng` translations with the row's set over them, locale by locale and field by field."""
    out: dict[str, Any] = dict(old) if isinstance(old, dict) else {}
    for locale, fields in new.items():
        kept = out.get(locale)
        out[locale] = {**(kept if isinstance(kept, dict) else {}), **fields}
    return out


def parse_user(header: list[str], cells: list[str]) -> dict[str, Any] | str:
    if len(cells) != len(header):
        return f"expected {len(header)} columns, got {len(cells)}"
    unstorable = _unstorable_cell(header, cells)
    if unstorable:
        return unstorable
    row = {h.strip(): c.strip() for h, c in zip(header, cells, strict=True)}
    cuid = row.pop("cuid")
    if not cuid or len(cuid) > 256 or "/" in cuid:
        return "cuid is empty, too long or contains '/'"
    try:
        return {"cuid": cuid, "attributes": {k: _scalar(k, v) for k, v in row.items() if v != ""}}
    except _BadCell as exc:
        return str(exc)


def product_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for every field that differs; attributes by their own name.

    `new` is the whole product after the row (`merge_product`), so a column the file left out is no change.
    A product seen for the first time has no changes: nothing "dropped" or "came back".
    """
    if old is None:
        return []
    out: list[tuple[str, Any, Any]] = []
    for name in PRODUCT_FIELDS:
        if name in new and old.get(name) != new[name]:
            out.append((name, old.get(name), new[name]))
    old_attrs, new_attrs = old.get("attributes") or {}, new.get("attributes") or {}
    for name in sorted(set(old_attrs) | set(new_attrs)):
        if old_attrs.get(name) != new_attrs.get(name):
            out.append((name, old_attrs.get(name), new_attrs.get(name)))
    return out


def attribute_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Attributes the feed row sets to a different value (absent columns keep their value)."""
    return [(k, old.get(k), v) for k, v in sorted(new.items()) if old.get(k) != v]


def price_dropped(old: Any, new: Any, min_amount: float | None, min_percent: float | None) -> bool:
    if not isinstance(old, int | float) or not isinstance(new, int | float) or new >= old or old <= 0:
        return False
    if min_amount is not None and old - new < min_amount - 1e-9:
        return False
    return not (min_percent is not None and (old - new) / old * 100 < min_percent - 1e-9)
