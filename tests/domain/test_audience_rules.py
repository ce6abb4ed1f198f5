"""Pure audience rules: ids, schedules and send windows, feed rows, subscriber rows."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from domain import feeds, subscribers
from domain.schedule import DAYS, in_window, next_occurrence, recipient_zone, window_opens, zone
from workflows import ids


@pytest.mark.parametrize(
    ("got", "want"),
    [
        (ids.subscriber_sync_id("s1", "i1"), "subscribers/s1/i1"),
        (ids.feed_sync_id("s1", "f1"), "feed/s1/f1"),
        (ids.feed_run_id("fsync_1", "cmp_1"), "run_fsync_1_cmp_1"),
        (ids.broadcast_workflow_id("run_1"), "broadcast/run_1"),
        (ids.broadcast_send_key("run_1", "usr_1", "app_push"), "bcast:run_1:usr_1:app_push"),
    ],
)
def test_ids(got: str, want: str) -> None:
    """Audience ids and keys have one stable format."""
    assert got == want


def test_next_occurrence_respects_days_and_timezone() -> None:
    """The next 10:00 Paris time on a weekday, from a Saturday, is Monday 08:00 UTC (summer)."""
    saturday = datetime(2026, 6, 6, 12, 0, tzinfo=UTC)
    got = next_occurrence(saturday, time(10, 0), ["mon", "tue", "wed", "thu", "fri"], zone("Europe/Paris"))
    assert got == datetime(2026, 6, 8, 8, 0, tzinfo=UTC)
    same_day = next_occurrence(
        datetime(2026, 6, 8, 7, 0, tzinfo=UTC), time(10, 0), list(DAYS), zone("Europe/Paris")
    )
    assert same_day == datetime(2026, 6, 8, 8, 0, tzinfo=UTC)


def test_send_window_wraps_midnight_and_opens_next_morning() -> None:
    """A 22:00-06:00 window holds at 23:00 and 05:00; a 09:00-21:00 one opens at 09:00 local."""
    tz = zone("America/New_York")
    assert in_window(datetime(2026, 1, 10, 4, 0, tzinfo=UTC), time(22, 0), time(6, 0), tz)  # 23:00 NY
    assert not in_window(datetime(2026, 1, 10, 17, 0, tzinfo=UTC), time(22, 0), time(6, 0), tz)  # 12:00 NY
    opens = window_opens(datetime(2026, 1, 10, 7, 0, tzinfo=UTC), time(9, 0), time(21, 0), tz)  # 02:00 NY
    assert opens == datetime(2026, 1, 10, 14, 0, tzinfo=UTC)
    assert zone("Not/AZone", "Europe/Paris").key == "Europe/Paris"


def test_recipient_zone_from_attribute_then_locale_then_default() -> None:
    """The timezone attribute wins; else a single-zone locale country; else the campaign default."""
    assert recipient_zone("Asia/Tokyo", "fr_FR", "UTC").key == "Asia/Tokyo"
    assert recipient_zone(None, "fr_FR", "UTC").key == "Europe/Paris"
    assert recipient_zone(None, "en_US", "Europe/Madrid").key == "Europe/Madrid"  # several US zones
    assert recipient_zone("", None, "Europe/Madrid").key == "Europe/Madrid"


def test_product_row_parsing_and_changes() -> None:
    """Feed rows keep typed fields, localized columns and attributes; changes list old and new values."""
    header = ["sku", "price", "in_stock", "categories", "size", "lng:de_DE:name"]
    row = feeds.parse_product(header, ["s1", "12.5", "yes", "A|B", "42", "Schuh"])
    assert row == {"sku": "s1", "price": 12.5, "in_stock": True, "categories": ["A", "B"],
                   "attributes": {"size": 42, "lng": {"de_DE": {"name": "Schuh"}}}}  # fmt: skip
    assert feeds.parse_product(header, ["s1", "-1", "", "", "", ""]) == "price is negative"
    assert feeds.product_changes(None, row) == []
    old = {**row, "price": 20.0, "attributes": {"size": 41}}
    assert feeds.product_changes(old, row) == [
        ("price", 20.0, 12.5), ("lng", None, {"de_DE": {"name": "Schuh"}}), ("size", 41, 42)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "amount", "percent", "dropped"),
    [(100, 80, None, None, True), (100, 95, None, 10, False), (100, 90, None, 10, True),
     (100, 97, 5, None, False), (100, 120, None, None, False), (None, 5, None, None, False)],
)  # fmt: skip
def test_price_drop_thresholds(
    old: float, new: float, amount: float | None, percent: float | None, dropped: bool
) -> None:
    """A drop counts only when the price fell by at least the configured amount and percentage."""
    assert feeds.price_dropped(old, new, amount, percent) is dropped


def test_subscriber_rows() -> None:
    """Headers are exact per identifier type; phones are E.164 digits; emails are checked."""
    assert subscribers.header_error("phone", ["Phone Numbers"]) is None
    assert subscribers.header_error("email", ["mail"]) is not None
    assert subscribers.row_value("phone", ["15551234567"])[0] == "+15551234567"  # type: ignore[index]
    assert isinstance(subscribers.row_value("phone", ["555-1234"]), str)
    assert isinstance(subscribers.row_value("email", ["a@b"]), str)
    assert subscribers.row_value("email", ["a", "b"]) == "expected 1 column, got 2"
