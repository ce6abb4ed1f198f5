"""Replay of BroadcastWorkflow histories: runs in flight when the workflow changes must replay.

`broadcast_histories/rounds_*.json` were recorded on the code before patch "broadcast-shard-loops"
(every shard's batch in lock-step rounds); `shard_loops_*.json` after it; `slot_check_superseded.json`
a run that patch "broadcast-slot-check" ended unsent (its slot moved before it woke); `campaign_stopped_*.json`
a run signalled by a pause while it slept out a Retry-After, woken (patch "broadcast-campaign-stopped") or
ignored by a worker before it (tests/audience/test_broadcast_pause_ends_run.py records them). Record missing ones with
`REJOIN_RECORD_HISTORIES=1 pytest tests/audience/test_broadcast_replay.py -k record`
(histories are append-only: a recorded file is never overwritten).
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from store.engine import Store
from tests.audience.feed_helpers import batch_campaign, provider_push, push_user, run_result
from tests.helpers import SectionKeys, create_campaign
from tests.provider_server import ProviderServer, Received, Reply
from workflows.broadcast import BroadcastWorkflow
from workflows.ids import broadcast_workflow_id

HISTORIES = Path(__file__).resolve().parent / "broadcast_histories"
RECORDING = os.environ.get("REJOIN_RECORD_HISTORIES") == "1"
NAME = os.environ.get("REJOIN_BROADCAST_HISTORY", "shard_loops_throttled_then_sent")


def _files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "production-runner"])
@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
async def test_recorded_broadcast_history_replays(path: Path, sandboxed: bool) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    if sandboxed:
        replayer = Replayer(workflows=[BroadcastWorkflow], data_converter=pydantic_data_converter)
    else:
        replayer = Replayer(
            workflows=[BroadcastWorkflow], data_converter=pydantic_data_converter,
            workflow_runner=UnsandboxedWorkflowRunner(),
        )  # fmt: skip
    await replayer.replay_workflow(history)


def test_both_delivery_paths_are_recorded() -> None:
    stems = [p.stem for p in _files()]
    assert any(s.startswith("rounds_") for s in stems) and any(s.startswith("shard_loops_") for s in stems), stems


@pytest.fixture
def _s3(s3: str) -> str:
    return s3


@pytest.mark.skipif(not RECORDING, reason="records a history (REJOIN_RECORD_HISTORIES=1)")
async def test_record_broadcast_history(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer, _s3: str,
) -> None:  # fmt: skip
    """Three recipients over two shards; the first call is throttled (429, Retry-After 1)."""
    target = HISTORIES / f"{NAME}.json"
    assert not target.exists(), f"{target} is recorded already (histories are append-only)"
    path = await provider_push(api, section, fresh_provider)
    for _ in range(3):
        await push_user(api, section, store)
    throttled: list[bool] = []

    def answer(req: Received) -> Reply:
        if not throttled:
            throttled.append(True)
            return Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"})
        return Reply(200)

    fresh_provider.handler(path, answer)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    assert r.status_code == 202, r.text
    run_id = str(r.json()["id"])
    progress = await run_result(env.client, run_id, timeout=120)
    assert progress.sent == 3, progress
    history = await env.client.get_workflow_handle(broadcast_workflow_id(run_id)).fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    target.write_text(history.to_json())


@pytest.mark.skipif(not RECORDING, reason="records a history (REJOIN_RECORD_HISTORIES=1)")
async def test_record_superseded_history(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer, _s3: str,
) -> None:  # fmt: skip
    """Patch "broadcast-slot-check": a run started for a one-off `send_at`, which an edit moved before
    the run woke: it ends superseded after `plan_audience`, sending nothing."""
    target = HISTORIES / "slot_check_superseded.json"
    assert not target.exists(), f"{target} is recorded already (histories are append-only)"
    await provider_push(api, section, fresh_provider)
    await push_user(api, section, store)
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": at.isoformat()})
    cid = await create_campaign(api, section, spec)
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    assert r.status_code == 202, r.text
    run_id = str(r.json()["id"])
    moved = dict(spec, schedule={"send_at": (at + timedelta(hours=1)).isoformat()})
    assert (await api.put(f"/api/v1/campaigns/{cid}", json=moved, headers=section.mgmt)).status_code == 200
    progress = await run_result(env.client, run_id, timeout=120)
    assert progress.state == "superseded" and progress.sent == 0, progress
    history = await env.client.get_workflow_handle(broadcast_workflow_id(run_id)).fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    target.write_text(history.to_json())


def test_a_sleeping_run_is_recorded_waiting_on_its_row() -> None:
    """On the shard-loop path the run's row says "waiting" while every shard sleeps (a vendor's
    Retry-After here), then "sending" again; the lock-step path never wrote "waiting"."""
    states = {p.stem: _set_states(p) for p in _files()}
    assert states["shard_loops_throttled_then_sent"] == ["sending", "waiting", "sending", "done"], states
    assert states["rounds_throttled_then_sent"] == ["sending", "done"], states
    assert states["slot_check_superseded"] == [], states  # ended by `plan_audience`, which wrote its row


def _set_states(path: Path) -> list[str]:
    """The state each `broadcast.set_state` activity of a recorded history wrote."""
    out = []
    for event in json.loads(path.read_text())["events"]:
        attrs = event.get("activityTaskScheduledEventAttributes")
        if attrs and attrs["activityType"]["name"] == "broadcast.set_state":
            args = [json.loads(base64.b64decode(p["data"])) for p in attrs["input"]["payloads"]]
            out.append(str(args[1]))
    return out
