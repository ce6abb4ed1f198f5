"""How much time the running activity has left, read from Temporal's activity info.

Two clocks matter to a provider call: the attempt's start-to-close timeout (Temporal cancels the
attempt when it passes, mid-call if need be: the call's retry is then flagged a possible
duplicate), and the schedule-to-close budget over all attempts (a Retry-After past it cannot be
honoured). Outside an activity, or without the timeout set, neither is known: None.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _info() -> activity.Info | None:
    try:
        return activity.info()
    except RuntimeError:  # not in an activity
        return None


def budget_left(now: datetime | None = None) -> float | None:
    """Seconds left of the activity's schedule-to-close budget, over all its attempts."""
    info = _info()
    if info is None or not info.schedule_to_close_timeout or info.scheduled_time is None:
        return None
    deadline = _aware(info.scheduled_time) + info.schedule_to_close_timeout
    return (deadline - (now or datetime.now(UTC))).total_seconds()


def attempt_share_left(now: datetime | None = None) -> float | None:
    """Share (0..1) of this attempt's start-to-close time still left."""
    info = _info()
    if info is None or not info.start_to_close_timeout or info.started_time is None:
        return None
    timeout = info.start_to_close_timeout
    left = _aware(info.started_time) + timeout - (now or datetime.now(UTC))
    return max(0.0, left / timeout)
