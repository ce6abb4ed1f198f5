"""A send window from a time to the same time: refused on save (it never opens, and its journeys
deferred for ever); a spec stored before that check still loads and reads it as the whole day."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from domain.campaign import STORED, CampaignSpec
from domain.schedule import in_window


def _spec(window: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "c", "type": "custom_trigger", "channel_priority": ["email"],
        "trigger": {"wait": "PT1H", "event_name": "E"}, "send_window": window,
        "variations": [{"id": "a", "name": "A", "share": 100, "steps": [{"name": "s", "messages": {"email": {}}}]}],
    }  # fmt: skip


def test_an_empty_window_is_refused_naming_it_but_a_stored_one_loads() -> None:
    with pytest.raises(ValidationError) as err:
        CampaignSpec.model_validate(_spec({"start": "10:00", "end": "10:00"}))
    assert err.value.errors()[0]["loc"][0] == "send_window" and "must differ" in str(err.value)
    stored = CampaignSpec.model_validate(_spec({"start": "10:00", "end": "10:00"}), context={STORED: True})
    assert stored.send_window is not None and stored.send_window.start == "10:00"
    CampaignSpec.model_validate(_spec({"start": "22:00", "end": "06:00"}))  # wrapping midnight is fine


def test_a_window_from_a_time_to_itself_is_open_all_day() -> None:
    utc = ZoneInfo("UTC")
    for hour in (0, 9, 10, 23):
        assert in_window(datetime(2026, 3, 1, hour, 30, tzinfo=UTC), time(10), time(10), utc)
    assert not in_window(datetime(2026, 3, 1, 8, tzinfo=UTC), time(9), time(21), utc)
