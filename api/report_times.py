"""The time bounds a report range (`from`, `to`) may take.

A report rounds its range to whole hours and steps an hour past each end (store/reports.py),
so a time near the ends of Python's datetime range (year 1 or 9999, or a zone offset pushing
it past them) overflowed into a 500. Reports cover campaign activity, so anything outside
1970-9000 is a mistake: it gets a 422 naming the field, like a time without a zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def within_report_bounds(at: datetime) -> datetime:
    """`at` if it lies in [1970, 9000) UTC; ValueError (a 422 at the field) otherwise."""
    try:
        utc = at.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00 is past year 9999 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError("must be between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z")
    return at


# A report range's end point: ISO 8601 with a zone, within the bounds above.
ReportTime = Annotated[AwareDatetime, AfterValidator(within_report_bounds)]
