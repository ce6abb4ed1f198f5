"""Send times: a campaign's schedule (time of day, days of week, timezone) and quiet hours.

Pure functions of an instant, so workflows can call them with `workflow.now()` and activities
with their `as_of`. Times of day are local to a timezone; DST gaps and repeats follow
`zoneinfo`, except that a local time which does not exist (a DST gap) is taken as the first
instant after the gap: a 02:30 on a Berlin spring-forward day is 03:00 CEST, so a send window
02:30-03:30 opens that day at 03:00 (shifting by the gap instead gave 03:30, the window's end:
the step waited a day).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from domain.campaign import SendWindow

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
        candidate_utc = _local_to_utc(datetime.combine(day, at), tz)
        if candidate_utc >= after.astimezone(UTC):
            return candidate_utc
    raise ValueError("days must name at least one weekday")


def _local_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant of the naive local time `wall` in `tz`; in a repeated hour the first; in a DST
    gap (no such local time) the gap's end, the first instant whose local time is later."""
    first = wall.replace(tzinfo=tz).astimezone(UTC)  # fold 0: a gap's time shifted past the gap
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap: the offset after it (fold 1) puts `wall` before the transition; the gap's end lies
    # between the two readings. Transitions fall on whole minutes (all of today's zones).
    instant = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    while instant < first and instant.astimezone(tz).replace(tzinfo=None) < wall:
        instant += timedelta(minutes=1)
    return instant


def in_window(instant: datetime, start: time, end: time, tz: ZoneInfo) -> bool:
    """Is the local time of `instant` within [start, end)? A window may wrap midnight (22:00-06:00).
    start == end (refused on save; only specs stored before that) is the whole day, never empty:
    an empty window would defer its messages for ever."""
    t = instant.astimezone(tz).time().replace(tzinfo=None)
    if start == end:
        return True
    if start <= end:
        return start <= t < end
    return t >= start or t < end


def window_opens(instant: datetime, start: time, end: time, tz: ZoneInfo) -> datetime:
    """`instant` if it is inside the window, else when the window next opens (UTC)."""
    if in_window(instant, start, end, tz):
        return instant.astimezone(UTC)
    return next_occurrence(instant, start, list(DAYS), tz)


@lru_cache(maxsize=1)
def _country_zones() -> dict[str, list[str]]:
    """Country code -> its timezones, from the system tz database's zone.tab (empty if absent)."""
    for base in TZPATH:
        path = Path(base) / "zone.tab"
        if path.exists():
            out: dict[str, list[str]] = {}
            for line in path.read_text().splitlines():
                if line and not line.startswith("#"):
                    cols = line.split("\t")
                    if len(cols) >= 3:
                        out.setdefault(cols[0], []).append(cols[2])
            return out
    return {}


def locale_zone(locale: str | None) -> str | None:
    """The timezone of a locale's country when the country has only one (fr_FR -> Europe/Paris)."""
    if not locale:
        return None
    parts = locale.replace("-", "_").split("_")
    if len(parts) < 2:
        return None
    zones = _country_zones().get(parts[-1].upper(), [])
    return zones[0] if len(zones) == 1 else None


def recipient_zone(timezone_attribute: object, locale: str | None, default: str) -> ZoneInfo:
    """A recipient's timezone: their `timezone` attribute, else their locale's country, else the default."""
    name = timezone_attribute if isinstance(timezone_attribute, str) and timezone_attribute else locale_zone(locale)
    return zone(name, default)


def recipient_window(
    window: SendWindow, attributes: Mapping[str, object], locale: str | None
) -> tuple[time, time, ZoneInfo]:
    """A send window's start, end and zone for one recipient (`recipient_zone` of their attributes)."""
    zone_of = recipient_zone(attributes.get("timezone"), locale, window.timezone)
    return parse_hhmm(window.start), parse_hhmm(window.end), zone_of
