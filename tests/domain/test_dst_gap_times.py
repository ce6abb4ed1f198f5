"""A local time that does not exist (a DST gap) is the first instant after the gap.

A send window 02:30-03:30 in Europe/Berlin on the spring-forward night (02:00-03:00 does not exist)
is open 03:00-03:30 CEST. Shifting 02:30 by the gap gave 03:30, the window's end: the step was
outside its window there and waited a day (a QA trial's time-skipped journey, sent 2027-03-29)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from domain.schedule import DAYS, in_window, next_occurrence, parse_hhmm, window_opens

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


def test_a_window_opening_inside_a_gap_opens_at_the_gap_end() -> None:
    start, end = parse_hhmm("02:30"), parse_hhmm("03:30")
    opens = window_opens(datetime(2027, 3, 28, 0, 0, tzinfo=UTC), start, end, BERLIN)
    assert opens == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)  # 03:00 CEST, the same day
    assert in_window(opens, start, end, BERLIN)


@pytest.mark.parametrize(
    ("after", "at", "tz", "expected"),
    [
        (datetime(2027, 3, 27, 12, tzinfo=UTC), "02:00", BERLIN, datetime(2027, 3, 28, 1, 0, tzinfo=UTC)),
        (datetime(2027, 3, 27, 12, tzinfo=UTC), "02:59", BERLIN, datetime(2027, 3, 28, 1, 0, tzinfo=UTC)),
        (datetime(2027, 3, 13, 12, tzinfo=UTC), "02:15", NEW_YORK, datetime(2027, 3, 14, 7, 0, tzinfo=UTC)),
        # Not in a gap: as before. A repeated hour (fall back) takes its first occurrence.
        (datetime(2027, 10, 30, 12, tzinfo=UTC), "02:30", BERLIN, datetime(2027, 10, 31, 0, 30, tzinfo=UTC)),
        (datetime(2027, 3, 27, 12, tzinfo=UTC), "03:00", BERLIN, datetime(2027, 3, 28, 1, 0, tzinfo=UTC)),
        (datetime(2027, 3, 13, 12, tzinfo=UTC), "09:00", NEW_YORK, datetime(2027, 3, 13, 14, 0, tzinfo=UTC)),
    ],
)
def test_next_occurrence_of_a_local_time(after: datetime, at: str, tz: ZoneInfo, expected: datetime) -> None:
    assert next_occurrence(after, parse_hhmm(at), list(DAYS), tz) == expected
