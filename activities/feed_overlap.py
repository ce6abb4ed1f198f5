"""One sync of a feed at a time, whoever started it, and no sync row left `running` by a dead workflow.

The API refuses a sync while another runs (api/routes/feeds.py: one workflow id for its syncs, and a
409 while the feed's schedule's sync runs), but the feed's `sync_every` Schedule fires regardless of a
sync the API started. So every sync checks when it begins (`FeedActivities.begin`): the feed's other
syncs still `running` in the store whose workflow run Temporal says is still running make this one end
at once, `skipped`, having read nothing; those whose run has ended (terminated, timed out, or gone past
retention) never finished their row and are ended `failed` here.

The liveness check is a Temporal call from a synchronous activity (a worker thread): it runs on the
worker's event loop, where the client lives (`asyncio.run_coroutine_threadsafe`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete
from sqlmodel import Session, col, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from store.feed_tables import Feed, FeedStage, FeedSync

DESCRIBE_TIMEOUT = 30.0  # seconds; a Temporal that does not answer fails the attempt (retried)
RUNNING = "running"


class Liveness:
    """Whether the workflow runs of sync rows still run, asked of Temporal from a worker thread."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop

    def ended(self, workflow_id: str, run_id: str | None) -> str | None:
        """How the run ended ("terminated", "timed out", "not found", ...), or None while it runs."""
        future = asyncio.run_coroutine_threadsafe(self._status(workflow_id, run_id), self.loop)
        return future.result(timeout=DESCRIBE_TIMEOUT)

    async def _status(self, workflow_id: str, run_id: str | None) -> str | None:
        return await run_ended(self.client, workflow_id, run_id)


async def run_ended(client: Client, workflow_id: str, run_id: str | None = None) -> str | None:
    """How a workflow run (the latest of `workflow_id` without `run_id`) ended: "terminated", "timed
    out", "not found" (never started, or deleted after its retention), ...; None while it runs."""
    try:
        described = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return "not found"
        raise
    if described.status in (None, WorkflowExecutionStatus.RUNNING):
        return None
    return described.status.name.lower().replace("_", " ")


def others_running(s: Session, feed_id: str, sync_id: str) -> Sequence[FeedSync]:
    """The feed's other syncs whose rows are still `running`, oldest first."""
    return s.exec(
        select(FeedSync)
        .where(FeedSync.feed_id == feed_id, FeedSync.state == RUNNING, FeedSync.id != sync_id)
        .order_by(col(FeedSync.started_at))
    ).all()


def check(liveness: Liveness, rows: Sequence[FeedSync]) -> dict[str, str | None]:
    """Of `rows` with a workflow run on record, sync id -> how its run ended (None: still running).
    Rows without one (begun before runs were kept) are left out: nothing tells whether they run."""
    return {r.id: liveness.ended(r.workflow_id, r.workflow_run_id) for r in rows if r.workflow_id}


def end_dead(s: Session, ended: dict[str, str | None], now: datetime) -> None:
    """End `failed` the rows whose run ended without finishing them (still `running`: not ended since)."""
    for sync_id, how in ended.items():
        sync = s.get(FeedSync, sync_id)
        if how is None or sync is None or sync.state != RUNNING:
            continue
        s.execute(delete(FeedStage).where(FeedStage.sync_id == sync.id))  # type: ignore[arg-type]
        sync.state = "failed"
        sync.error = f"its workflow ended without finishing it (Temporal says: {how}); nothing was applied"
        sync.finished_at = now
        sync.duration_ms = max(0, int((now - sync.started_at).total_seconds() * 1000))
        s.add(sync)


def lock_feed(s: Session, feed_id: str) -> Feed | None:
    """The feed, its row locked to the end of the transaction (PostgreSQL; SQLite's BEGIN IMMEDIATE
    already serialises writers): two syncs beginning at once decide one after the other, so the second
    sees the first's row and is skipped, never both run nor both skipped."""
    return s.exec(select(Feed).where(Feed.id == feed_id).with_for_update()).first()


def running_sync(rows: Sequence[FeedSync], ended: dict[str, str | None]) -> FeedSync | None:
    """The first of the feed's other `running` rows that makes a beginning sync skip: its run still runs,
    or it began after the check (not in `ended`: too new to have ended). Rows without a run on record
    never do (a sync begun before the upgrade that was terminated would block the feed forever)."""
    for row in rows:
        if row.workflow_id and (row.id not in ended or ended[row.id] is None):
            return row
    return None


def skip_reason(other: FeedSync) -> str:
    return (
        f"another sync of the feed was running: sync {other.id} (workflow {other.workflow_id}); a feed "
        "syncs one file at a time, so this one read nothing"
    )
