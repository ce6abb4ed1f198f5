"""The Temporal Schedule of a recurring scheduled campaign, kept in step with the campaign.

One schedule per campaign (`campaign/<section>/<campaign>`): a calendar at the spec's time of
day on its weekdays in its timezone, ending at `until`. It exists while the campaign is not
archived and its spec recurs; it is paused unless the campaign is active. Every campaign
create/update/transition calls `sync` after its commit; `sync` is idempotent, so a failed call
(Temporal unreachable) is repaired by repeating the request. Operators see the schedule, its
next fires and its runs in the Temporal UI.
"""

from __future__ import annotations

from datetime import datetime

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
from temporalio.service import RPCError, RPCStatusCode

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


def recurs(spec: CampaignSpec) -> bool:
    return spec.type == CampaignType.SCHEDULED and spec.schedule is not None and spec.schedule.recurring


def build(settings: Settings, section_id: str, campaign_id: str, spec: CampaignSpec, status: str) -> Schedule:
    assert spec.schedule is not None
    at = sched.parse_hhmm(spec.schedule.time_of_day)
    weekdays = sorted({(sched.DAYS.index(d) + 1) % 7 for d in spec.schedule.days})  # Temporal: 0 = Sunday
    sid = campaign_schedule_id(section_id, campaign_id)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ScheduledCampaignWorkflow.run,
            ScheduledFireInput(section_id=section_id, campaign_id=campaign_id),
            id=sid,  # Temporal appends the fire time: one workflow id per slot
            task_queue=settings.task_queue,
            static_summary=f"scheduled campaign {campaign_id}",
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    hour=[ScheduleRange(at.hour)],
                    minute=[ScheduleRange(at.minute)],
                    day_of_week=[ScheduleRange(d) for d in weekdays],
                    comment=f"{spec.schedule.time_of_day} {','.join(spec.schedule.days)}",
                )
            ],
            time_zone_name=spec.schedule.timezone,
            end_at=spec.schedule.until,
        ),  # fmt: skip
        # A run still sending (or waiting for quiet hours) when the next slot comes: that fire
        # starts once the run is done instead of being lost (SKIP) or overlapping it.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.BUFFER_ONE),
        state=ScheduleState(paused=status != "active", note=f"campaign {status}"),
    )


async def sync(
    client: Client, settings: Settings, section_id: str, campaign_id: str, spec: CampaignSpec, status: str
) -> None:
    """Create, update, pause/unpause or delete the campaign's schedule to match the campaign."""
    handle = client.get_schedule_handle(campaign_schedule_id(section_id, campaign_id))
    if not recurs(spec) or status == "archived":
        try:
            await handle.delete()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
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
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    paused = d.schedule.state.paused
    return ScheduleOut(id=handle.id, paused=paused, next_fire_times=[] if paused else list(d.info.next_action_times))
