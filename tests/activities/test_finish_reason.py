"""A journey row carries an exit reason only when it exited.

An exit signal can arrive after the last step (a purchase while that step was being finished): the
workflow's state then holds a reason though the journey completed. The row said `completed` with
reason `purchased` (a load trial found 5), which reads as neither for operators and reports."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest

from activities.journey import JourneyActivities
from domain.caps import CapPolicy
from settings import Settings
from store.engine import Store
from store.tables import Journey
from workflows.models import FinishRequest


@pytest.mark.parametrize(("status", "kept"), [("completed", None), ("holdout", None), ("exited", "purchased")])
def test_only_an_exited_journey_keeps_its_exit_reason(
    store: Store, settings: Settings, status: str, kept: str | None
) -> None:
    journey_id = "jny_" + secrets.token_hex(6)
    at = datetime.now(UTC)
    with store.session() as s:
        s.add(Journey(id=journey_id, workflow_id="wf-" + journey_id, section_id="sec", campaign_id="cmp",
                      campaign_version=1, user_id="usr_" + secrets.token_hex(4), variation_id="a", triggered_at=at))  # fmt: skip
    acts = JourneyActivities(store, CapPolicy(settings.global_cap_messages, settings.global_cap_window),
                             settings.priority_window)  # fmt: skip
    acts.finish(FinishRequest(journey_id=journey_id, status=status, exit_reason="purchased", as_of=at))  # type: ignore[arg-type]
    with store.session() as s:
        row = s.get(Journey, journey_id)
        assert row is not None
        assert (row.status, row.exit_reason) == (status, kept)
