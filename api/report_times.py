"""The time bounds a report range (`from`, `to`) may take, and the time zone of its day series.

A report rounds its range to whole hours and steps an hour past each end (store/reports.py),
so a time near the ends of Python's datetime range (year 1 or 9999, or a zone offset pushing
it past them) overflowed into a 500. Reports cover campaign activity, so anything outside
1970-9000 is a mistake: it gets a 422 naming the field, like a time without a zone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


# ------------------------------------------------------------------ day series in a time zone


def known_zone(name: str) -> str:
    """`name` if it is an IANA time zone name this host knows; ValueError (a 422 at the field) if not."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone '{name}' (use an IANA name such as Europe/Paris)") from None
    return name


# A report's day series time zone (`tz`): an IANA name; the series are by UTC day without one.
ReportZone = Annotated[str, AfterValidator(known_zone)]


def local_days(by_hour: Mapping[str, float], zone: ZoneInfo) -> tuple[dict[str, float], bool]:
    """Figures per UTC hour ('YYYYMMDDHH') added up per local day of `zone`, and whether that is
    exact. Counters are kept per UTC hour, so a zone whose offset is a whole number of hours (DST
    included) gets exact local days. In a zone offset by a fraction of an hour (Asia/Kolkata
    +05:30, Asia/Kathmandu +05:45) an hour straddles local midnight: it counts in the local day of
    its start, so up to 30 (45) minutes after local midnight fall in the previous day, and the
    second value is False."""
    days: dict[str, float] = {}
    exact = True
    for key, value in by_hour.items():
        start = datetime.strptime(key, "%Y%m%d%H").replace(tzinfo=UTC)
        local = start.astimezone(zone)
        offset = local.utcoffset() or timedelta(0)
        exact = exact and offset % timedelta(hours=1) == timedelta(0)
        day = local.date().isoformat()
        days[day] = days.get(day, 0) + value
    return dict(sorted(days.items())), exact
