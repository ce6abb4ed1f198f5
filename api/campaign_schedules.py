"""The Temporal Schedule of a scheduled campaign, kept in step with the campaign.

One schedule per campaign (`campaign/<section>/<campaign>`): for a recurring spec, a calendar at
the spec's time of day on its weekdays in its timezone, ending at `until`; for a one-off spec
(`send_at`), that one instant, with a single action. It exists while the campaign is not
archived and its spec has either; it is paused unless the campaign is active. Every campaign
create/update/transition calls `sync` after its commit; `sync` is idempotent, so a failed call
(Temporal unreachable) is repaired by repeating the request. Operators see the schedule, its
next fires and its runs in the Temporal UI.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError

from api.temporal_errors import missing
from domain import schedule as sched
from domain.campaign import CampaignSpec, CampaignType
from settings import Settings
from workflows.campaign_schedule import ScheduledCampaignWorkflow
from workflows.feed_models import ScheduledFireInput
from workflows.ids import campaign_schedule_id


class ScheduleOut(BaseModel):
    id: str
    paused: bool
    next_fire_times: list[datetime]


def has_schedule(spec: CampaignSpec) -> bool:
    """Recurring, or once at `send_at`: Temporal starts its runs (no `POST .../runs` needed)."""
    s = spec.schedule
    return spec.type == CampaignType.SCHEDULED and s is not None and (s.recurring or s.send_at is not None)


def _calendar(spec: CampaignSpec) -> tuple[ScheduleCalendarSpec, str]:
    """The calendar entry and its timezone: the one-off instant (UTC, to the second) or the weekly slots."""
    assert spec.schedule is not None
    if spec.schedule.send_at is not None:
        at = spec.schedule.send_at.astimezone(UTC)
        once = ScheduleCalendarSpec(
            year=[ScheduleRange(at.year)], month=[ScheduleRange(at.month)], day_of_month=[ScheduleRange(at.day)],
            hour=[ScheduleRange(at.hour)], minute=[ScheduleRange(at.minute)], second=[ScheduleRange(at.second)],
            comment=f"once at {at.isoformat()}",
        )  # fmt: skip
        return once, "UTC"
    at_time = sched.parse_hhmm(spec.schedule.time_of_day)
    weekdays = sorted({(sched.DAYS.index(d) + 1) % 7 for d in spec.schedule.days})  # Temporal: 0 = Sunday
    weekly = ScheduleCalendarSpec(
        hour=[ScheduleRange(at_time.hour)],
        minute=[ScheduleRange(at_time.minute)],
        day_of_week=[ScheduleRange(d) for d in weekdays],
        comment=f"{spec.schedule.time_of_day} {','.join(spec.schedule.days)}",
    )
    return weekly, spec.schedule.timezone


def build(settings: Settings, section_id: str, campaign_id: str, spec: CampaignSpec, status: str) -> Schedule:
    assert spec.schedule is not None
    calendar, zone = _calendar(spec)
    once = spec.schedule.send_at is not None
    sid = campaign_schedule_id(section_id, campaign_id)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ScheduledCampaignWorkflow.run,
            # The schedule keeps this input: its fires use the count of the last sync (any campaign save).
            ScheduledFireInput(section_id=section_id, campaign_id=campaign_id, shards=settings.broadcast_shards),
            id=sid,  # Temporal appends the fire time: one workflow id per slot
            task_queue=settings.task_queue,
            static_summary=f"scheduled campaign {campaign_id}",
        ),
        spec=ScheduleSpec(calendars=[calendar], time_zone_name=zone, end_at=spec.schedule.until),
        # A run still sending (or waiting for quiet hours) when the next slot comes: that fire
        # starts once the run is done instead of being lost (SKIP) or overlapping it.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.BUFFER_ONE),
        # One-off: a single action. Re-arming it on an update is harmless: the fire of that
        # instant always names the same run, which sends to nobody twice.
        state=ScheduleState(
            paused=status != "active", note=f"campaign {status}", limited_actions=once, remaining_actions=int(once)
        ),
    )


async def sync(
    client: Client, settings: Settings, section_id: str, campaign_id: str, spec: CampaignSpec, status: str
) -> None:
    """Create, update, pause/unpause or delete the campaign's schedule to match the campaign."""
    handle = client.get_schedule_handle(campaign_schedule_id(section_id, campaign_id))
    if not has_schedule(spec) or status == "archived":
        try:
            await handle.delete()
        except RPCError as err:
            if not missing(err):
                raise
        return
    wanted = build(settings, section_id, campaign_id, spec, status)
    try:
        await client.create_schedule(handle.id, wanted)
        return
    except ScheduleAlreadyRunningError:
        pass

    def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=wanted)

    await handle.update(replace)
    # Pausing is its own call: an update does not reliably carry the paused flag.
    current = await handle.describe()
    if current.schedule.state.paused != wanted.state.paused:
        if wanted.state.paused:
            await handle.pause(note=f"campaign {status}")
        else:
            await handle.unpause(note=f"campaign {status}")


async def describe(client: Client, section_id: str, campaign_id: str) -> ScheduleOut | None:
    handle = client.get_schedule_handle(campaign_schedule_id(section_id, campaign_id))
    try:
        d = await handle.describe()
    except RPCError as err:
        if missing(err):
            return None
        raise
    paused = d.schedule.state.paused
    return ScheduleOut(id=handle.id, paused=paused, next_fire_times=[] if paused else list(d.info.next_action_times))
