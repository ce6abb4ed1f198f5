"""Feed CSV cells: what is read as a number and what stays text."""

from __future__ import annotations

from domain.feeds import parse_product, parse_user


def test_only_plain_decimals_become_numbers() -> None:
    """Codes with a leading zero (ZIP codes, ids) keep their zero as text; `1_000` and other
    scripts' digits, which Python's float() reads, stay text; long integers stay exact."""
    header = ["cuid", "zip", "points", "typo", "arabic", "ratio", "big", "sci", "word"]
    row = ["c1", "01234", "42", "1_000", "٣", "-0.25", "123456789012345678901", "1e6", "Nan"]
    assert parse_user(header, row) == {"cuid": "c1", "attributes": {
        "zip": "01234", "points": 42, "typo": "1_000", "arabic": "٣", "ratio": -0.25,
        "big": 123456789012345678901, "sci": 1000000, "word": "Nan"}}  # fmt: skip


def test_a_price_is_a_plain_number() -> None:
    """A price may carry leading zeros (`007.50`) but not `_` or other scripts' digits."""
    header = ["sku", "price"]
    assert parse_product(header, ["s1", "007.50"]) == {"sku": "s1", "attributes": {}, "price": 7.5}
    for bad in ("1_000", "٣", "12 EUR"):
        assert parse_product(header, ["s1", bad]) == f"price '{bad}' is not a number"
