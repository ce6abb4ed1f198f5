"""Workflow ids and idempotency keys: pure functions, so every caller formats them the same way.

No email address or phone number ever appears here: users are opaque `usr_…` ids.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime


def journey_workflow_id(section_id: str, campaign_id: str, user_id: str) -> str:
    """One open journey per (section, campaign, user): signal-with-start on this id merges triggers."""
    return f"journey/{section_id}/{campaign_id}/{user_id}"


def send_key(journey_id: str, step_index: int, channel: str) -> str:
    """Idempotency key of one step's send on one channel; stable across retries and continue-as-new."""
    return f"{journey_id}:{step_index}:{channel}"


def decision_key(journey_id: str, step_index: int, excluded: list[str]) -> str:
    """Key of the channel/caps decision for a step (after excluding channels that failed for good)."""
    suffix = ",".join(sorted(excluded)) or "-"
    return f"{journey_id}:{step_index}:decide:{suffix}"


def subscriber_sync_id(section_id: str, integration_id: str) -> str:
    """Schedule id (and workflow id prefix) of an integration's subscriber-list sync."""
    return f"subscribers/{section_id}/{integration_id}"


def feed_sync_id(section_id: str, feed_id: str) -> str:
    """Schedule id (and workflow id prefix) of a feed's syncs."""
    return f"feed/{section_id}/{feed_id}"


def feed_sync_now_id(section_id: str, feed_id: str) -> str:
    """Workflow id of every sync the API starts for a feed (an upload, `POST .../sync`): one id, so
    Temporal refuses a second while one runs (a feed syncs one file at a time) and no two requests
    can both start one. Scheduled syncs have the schedule's own ids (`feed_sync_id` plus its time)."""
    return f"{feed_sync_id(section_id, feed_id)}/now"


def feed_run_id(sync_id: str, campaign_id: str) -> str:
    """The run a feed sync starts for a campaign: one per (sync, campaign), so planning is idempotent."""
    return f"run_{sync_id}_{campaign_id}"[:40]


def broadcast_workflow_id(run_id: str) -> str:
    """One workflow per batched campaign run (it drives the run's batches)."""
    return f"broadcast/{run_id}"


def batched_journey_id(run_id: str, user_id: str) -> str:
    """The journey row of one recipient of a batched run (its allocation, for reports and priority).

    Hashed: a run id and a user id together exceed the journey id's 64 characters."""
    digest = hashlib.sha256(f"{run_id}:{user_id}".encode()).hexdigest()[:40]
    return f"bj_{digest}"


def broadcast_send_key(run_id: str, user_id: str, channel: str) -> str:
    """Idempotency key of a batched run's message to one user on one channel."""
    return f"bcast:{run_id}:{user_id}:{channel}"


def campaign_schedule_id(section_id: str, campaign_id: str) -> str:
    """Temporal Schedule (and workflow id prefix) of a recurring scheduled campaign."""
    return f"campaign/{section_id}/{campaign_id}"


def scheduled_run_id(campaign_id: str, fire_time: datetime) -> str:
    """The run of one schedule fire: deterministic per (campaign, fire time), so a duplicate fire
    of the same time finds the same run and its recipients instead of messaging anyone twice."""
    return f"run_{campaign_id}_{fire_time.astimezone(UTC).strftime('%Y%m%dT%H%M%S')}"[:40]
