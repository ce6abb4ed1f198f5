"""Quiet hours for event-triggered journeys: a step due at night waits for the window or is dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import User
from tests.audience.feed_helpers import zone_at_local_hour
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    journey_result,
    reachable_user,
)


async def _night_journey(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, store: Store, outside: str,
    is_test: bool = False,
) -> tuple[str, str, str]:  # fmt: skip
    """A 1-hour cart journey with a 09:00-21:00 window for a user whose night it is: (campaign, user, zone)."""
    await add_integration(api, sec)
    window = {"start": "09:00", "end": "21:00", "outside": outside}
    cid = await create_campaign(api, sec, cart_campaign(wait="PT1H", send_window=window))
    dyid, uid = await reachable_user(api, sec)
    tz = zone_at_local_hour(range(0, 5))  # still night an hour from now
    with store.session() as s:
        user = s.get(User, uid)
        assert user is not None
        user.attributes = {"timezone": tz}
        user.is_test = is_test
        s.add(user)
    await collect(api, sec, dyid, add_to_cart("sku-q", 9.0))
    return cid, uid, tz


async def test_journey_step_waits_for_recipients_morning(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A cart reminder due at 02:00 in the user's timezone is sent at 09:00 their time."""
    started = datetime.now(UTC)
    cid, uid, tz = await _night_journey(api, env, section, store, "wait")
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1, result
    sent_at = next(d.at for d in result.decisions if d.outcome == "sent").astimezone(ZoneInfo(tz))
    assert (sent_at.hour, sent_at.minute) == (9, 0) and sent_at > started + timedelta(hours=4), sent_at


async def test_journey_step_dropped_outside_window(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """With outside='drop', a step due at night is skipped with reason quiet_hours."""
    cid, uid, _ = await _night_journey(api, env, section, store, "drop")
    result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 0 and [(d.outcome, d.reason) for d in result.decisions] == [
        ("skipped", "quiet_hours")
    ]


async def test_a_test_users_step_waits_for_the_window_on_its_own_clock(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """A test user's journey passes the wait for their morning on its own clock (no timer):
    the step is still sent at 09:00 their time, as the journey tells it."""
    started = datetime.now(UTC)
    cid, uid, tz = await _night_journey(api, env, section, store, "wait", is_test=True)
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1, result
    sent_at = next(d.at for d in result.decisions if d.outcome == "sent").astimezone(ZoneInfo(tz))
    assert (sent_at.hour, sent_at.minute) == (9, 0) and sent_at > started + timedelta(hours=4), sent_at
    events = (await journey_handle(env.client, section, cid, uid).fetch_history()).events
    assert not [e for e in events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
