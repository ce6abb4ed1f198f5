"""Workflow ids and idempotency keys: pure functions, so every caller formats them the same way.

No email address or phone number ever appears here: users are opaque `usr_…` ids.
"""

from __future__ import annotations


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
