"""Send times: a campaign's schedule (time of day, days of week, timezone) and quiet hours.

Pure functions of an instant, so workflows can call them with `workflow.now()` and activities
with their `as_of`. Times of day are local to a timezone; DST gaps and repeats follow
`zoneinfo` (a 02:30 that does not exist on a spring-forward day lands at 03:30).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """The named timezone, or the default when the name is missing or unknown."""
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def parse_hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def next_occurrence(after: datetime, at: time, days: list[str], tz: ZoneInfo) -> datetime:
    """The first instant >= `after` that is `at` local time on one of `days` (UTC)."""
    local = after.astimezone(tz)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if DAYS[day.weekday()] not in days:
            continue
        candidate = datetime.combine(day, at, tzinfo=tz)
        # Normalise through UTC so non-existent local times (DST gaps) move forward.
        candidate_utc = candidate.astimezone(UTC)
        if candidate_utc >= after.astimezone(UTC):
            return candidate_utc
    raise ValueError("days must name at least one weekday")


def in_window(instant: datetime, start: time, end: time, tz: ZoneInfo) -> bool:
    """Is the local time of `instant` within [start, end)? A window may wrap midnight (22:00-06:00)."""
    t = instant.astimezone(tz).time().replace(tzinfo=None)
    if start <= end:
        return start <= t < end
    return t >= start or t < end


def window_opens(instant: datetime, start: time, end: time, tz: ZoneInfo) -> datetime:
    """`instant` if it is inside the window, else when the window next opens (UTC)."""
    if in_window(instant, start, end, tz):
        return instant.astimezone(UTC)
    return next_occurrence(instant, start, list(DAYS), tz)
