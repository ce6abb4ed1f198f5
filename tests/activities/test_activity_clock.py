"""The two clocks of a running activity (activities/activity_clock.py): the attempt's share left
decides whether a gone push recipient's next subscription is tried in the same attempt; the
budget left decides whether a Retry-After can be honoured."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from temporalio.testing import ActivityEnvironment

from activities.activity_clock import attempt_share_left, budget_left

START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _env(start_to_close: timedelta | None, schedule_to_close: timedelta | None) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, started_time=START, scheduled_time=START - timedelta(seconds=30),
        start_to_close_timeout=start_to_close, schedule_to_close_timeout=schedule_to_close,
    )  # fmt: skip
    return env


def test_outside_an_activity_neither_clock_is_known() -> None:
    assert attempt_share_left() is None and budget_left() is None


def test_the_attempts_share_left_counts_from_its_start() -> None:
    env = _env(timedelta(seconds=60), None)
    assert env.run(attempt_share_left, START + timedelta(seconds=15)) == 0.75
    assert env.run(attempt_share_left, START + timedelta(seconds=45)) == 0.25
    assert env.run(attempt_share_left, START + timedelta(seconds=90)) == 0.0  # past it: none, not negative
    assert _env(None, None).run(attempt_share_left, START) is None


def test_the_budget_left_counts_from_the_first_schedule() -> None:
    env = _env(timedelta(seconds=60), timedelta(minutes=10))
    assert env.run(budget_left, START) == 570.0
    assert env.run(budget_left, START + timedelta(minutes=10)) == -30.0
    assert _env(timedelta(seconds=60), None).run(budget_left, START) is None
