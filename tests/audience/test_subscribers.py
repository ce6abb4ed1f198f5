"""Subscriber lists on S3: provisioning, credentials, sync override, atomicity, validation, resume.

S3 and IAM are moto in server mode on loopback, reached through boto3 with the credentials
"Sync now" issued; syncs run through the integration's Temporal Schedule on the real worker.
"""

from __future__ import annotations

import secrets
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import func as sa_func
from sqlalchemy import inspect
from sqlalchemy import select as sa_select
from sqlmodel import select
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.subscribers import SubscriberActivities
from security.crypto import SecretBox
from settings import Settings
from store.engine import Store
from store.reachability import reach
from store.subscriber_tables import SubscriberRejection, SubscriberSync, set_table_name, subscriber_set
from tests.audience.feed_helpers import crash_then_resume
from tests.helpers import (
    SectionKeys,
    add_integration,
    collect,
    email_for,
    eventually,
    login,
    new_dyid,
    opt_in,
)
from workflows.subscriber_models import (
    ClaimRequest,
    CleanupRequest,
    FinishSyncRequest,
    SyncFolderRequest,
    SyncFolderResult,
    SyncInput,
)
from workflows.subscribers import SubscriberSyncWorkflow


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _sync_now(api: httpx.AsyncClient, sec: SectionKeys, iid: str) -> dict[str, Any]:
    r = await api.post(f"/api/v1/integrations/{iid}/subscribers/sync", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _upload(provisioned: dict[str, Any], folder: str, content: bytes) -> None:
    """Upload as the customer does: with the credentials Rejoin issued, into the given prefix."""
    loc, creds = provisioned["location"], provisioned["credentials"]
    client = boto3.client(
        "s3", endpoint_url=loc["endpoint_url"], region_name=loc["region"],
        aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
    )  # fmt: skip
    client.put_object(Bucket=loc["bucket"], Key=f"{loc['prefix']}{folder}/data.csv", Body=content)


async def _status(api: httpx.AsyncClient, sec: SectionKeys, iid: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/integrations/{iid}/subscribers", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _synced(api: httpx.AsyncClient, sec: SectionKeys, iid: str, folder: str) -> dict[str, Any]:
    """Wait until the sync of `folder` has finished; returns its record."""

    async def done() -> dict[str, Any]:
        syncs = {s["folder"]: s for s in (await _status(api, sec, iid))["syncs"]}
        assert folder in syncs and syncs[folder]["state"] != "running", syncs
        return dict(syncs[folder])

    return await eventually(done, timeout=30)


async def _person(api: httpx.AsyncClient, sec: SectionKeys) -> tuple[str, str]:
    """An identified user (email known by its hash): (email, user id)."""
    dyid = new_dyid()
    await collect(api, sec, dyid, login(email_for(dyid)))
    r = await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)
    return email_for(dyid), str(r.json()["id"])


def _reachable(store: Store, sec: SectionKeys, user_id: str, channel: str = "email") -> bool:
    with store.session() as s:
        return channel in reach(s, sec.id, user_id, [channel]).opt_ins


def _csv(header: str, *rows: str) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


async def test_sync_overrides_api_opt_ins_and_later_api_calls_apply(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A synced list is the whole opted-in set (earlier API opt-ins/outs lose); API calls after it apply."""
    iid = (await add_integration(api, section))["id"]
    (a, ua), (b, ub), (c, uc) = [await _person(api, section) for _ in range(3)]
    await opt_in(api, section, "email", "email", a)
    r = await api.post(
        "/v2/userdata/channels/email/opt-out",
        json={"identifier": {"type": "email", "value": b}},
        headers=section.ing,
    )
    assert r.status_code == 200
    assert _reachable(store, section, ua) and not _reachable(store, section, ub)
    first = await _sync_now(api, section, iid)
    assert first["credentials"]["secret_access_key"]
    _upload(first, "upload_2026-01-05_09-00", _csv("email", b.upper(), c))
    await _sync_now(api, section, iid)
    sync = await _synced(api, section, iid, "upload_2026-01-05_09-00")
    assert (sync["state"], sync["rows_accepted"], sync["rows_rejected"]) == ("succeeded", 2, 0), sync
    assert not _reachable(store, section, ua)  # the API opt-in was overridden
    assert _reachable(store, section, ub) and _reachable(store, section, uc)
    await opt_in(api, section, "email", "email", a)
    r = await api.post(
        "/v2/userdata/channels/EMAIL/opt-out",
        json={"identifier": {"type": "email", "value": c}},
        headers=section.ing,
    )
    assert r.status_code == 200
    assert _reachable(store, section, ua) and not _reachable(store, section, uc)
    status = await _status(api, section, iid)
    assert (
        status["last_folder"] == "upload_2026-01-05_09-00" and status["syncs"][0]["duration_ms"] is not None
    )


async def test_failed_sync_leaves_previous_set_intact(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """A sync that fails half way (too many bad rows) applies nothing: the previous list stays active."""
    iid = (await add_integration(api, section))["id"]
    (a, ua), (b, ub) = [await _person(api, section) for _ in range(2)]
    provisioned = await _sync_now(api, section, iid)
    _upload(provisioned, "upload_2026-02-01_08-00", _csv("email", a))
    await _sync_now(api, section, iid)
    assert (await _synced(api, section, iid, "upload_2026-02-01_08-00"))["state"] == "succeeded"
    _upload(
        provisioned,
        "upload_2026-02-02_08-00",
        _csv("email", b, *[f"bad-{i}" for i in range(5)], "z@example.com"),
    )
    result = await env.client.execute_workflow(
        SubscriberSyncWorkflow.run,
        SyncInput(section_id=section.id, integration_id=iid, max_rejected_rows=2),
        id=f"subscribers-test/{secrets.token_hex(4)}",
        task_queue=settings.task_queue,
    )
    assert result.states == ["failed"], result
    sync = await _synced(api, section, iid, "upload_2026-02-02_08-00")
    assert sync["state"] == "failed" and "not applied" in sync["error"], sync
    assert [r["line"] for r in sync["rejections"]] == [3, 4, 5]
    assert _reachable(store, section, ua) and not _reachable(store, section, ub)
    assert (await _status(api, section, iid))["last_folder"] == "upload_2026-02-01_08-00"
    assert len(_set_tables(store, iid)) == 1  # the half-staged generation was dropped


async def test_folders_in_order_wrong_header_rejects_file_and_bad_rows_reported(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """Folders sync oldest first; a wrong header rejects the whole file; bad rows are listed by line and reason."""
    iid = (await add_integration(api, section, channel="sms"))["id"]
    provisioned = await _sync_now(api, section, iid)
    assert provisioned["location"]["header"] == "phone numbers"
    _upload(provisioned, "upload_2026-03-01_10-00", _csv("email", "15551230001"))
    good = b"phone numbers\r\n15551230001\r\n555-1234\r\n\r\n4915112345678\r\nabc\r\n1555,1\r\n\xff\xfe\r\n+447700900123"
    _upload(provisioned, "upload_2026-03-01_11-00", good)
    await _sync_now(api, section, iid)
    latest = await _synced(api, section, iid, "upload_2026-03-01_11-00")
    status = await _status(api, section, iid)
    first = next(s for s in status["syncs"] if s["folder"] == "upload_2026-03-01_10-00")
    assert first["state"] == "rejected" and "phone numbers" in first["error"] and first["rows_accepted"] == 0
    assert first["started_at"] <= latest["started_at"]
    assert latest["state"] == "succeeded" and latest["rows_accepted"] == 3, latest
    reasons = {r["line"]: r["reason"] for r in latest["rejections"]}
    assert set(reasons) == {3, 6, 7, 8}, reasons
    assert "E.164" in reasons[3] and "got 2" in reasons[7] and "UTF-8" in reasons[8]
    assert status["last_folder"] == "upload_2026-03-01_11-00"


async def test_credentials_regenerate_once_then_refused(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Sync now issues credentials once; they can be regenerated one more time, then the API refuses."""
    iid = (await add_integration(api, section))["id"]
    first = await _sync_now(api, section, iid)
    assert first["credentials"]["regenerations_left"] == 1
    assert (await _sync_now(api, section, iid))["credentials"] is None  # never shown again
    r = await api.post(f"/api/v1/integrations/{iid}/subscribers/credentials", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert (
        r.json()["access_key_id"] != first["credentials"]["access_key_id"]
        and r.json()["regenerations_left"] == 0
    )
    r = await api.post(f"/api/v1/integrations/{iid}/subscribers/credentials", headers=section.mgmt)
    assert r.status_code == 409 and "support" in r.json()["error"]
    push = (await add_integration(api, section, channel="app_push"))["id"]
    r = await api.post(f"/api/v1/integrations/{push}/subscribers/sync", headers=section.mgmt)
    assert r.status_code == 422


def _set_tables(store: Store, iid: str) -> list[str]:
    """The set tables (one per generation) that exist for an integration."""
    prefix = set_table_name(iid, 0)[: -len("0")]
    return [t for t in inspect(store.engine).get_table_names() if t.startswith(prefix)]


def _set_rows(store: Store, iid: str, generation: int) -> tuple[int, int]:
    """(rows, distinct hashes) in one generation's set table."""
    t = subscriber_set(set_table_name(iid, generation))
    with store.session() as s:
        row = s.connection().execute(sa_select(sa_func.count(), sa_func.count(t.c.value_hash.distinct()))).one()
    return int(row[0]), int(row[1])


def _rejected_lines(store: Store, sync_id: str) -> list[int]:
    with store.session() as s:
        return sorted(s.exec(select(SubscriberRejection.line).where(SubscriberRejection.sync_id == sync_id)).all())


class _Direct:
    """The sync's activities called one by one (as the workflow does), for crash/resume cases."""

    def __init__(self, store: Store, settings: Settings, section_id: str, iid: str, helpers: bool = False) -> None:
        if helpers:  # seal helper processes even for a small file (used on PostgreSQL only)
            settings = settings.model_copy(update={"subscriber_sync_pool_min_bytes": 0})
        self.acts = SubscriberActivities(store, settings, SecretBox(settings.secret_keys))
        self.section_id, self.iid = section_id, iid

    def request(self, folder: str, batch_size: int, max_rejected_rows: int = 100) -> SyncFolderRequest:
        claim = ActivityEnvironment().run(
            self.acts.claim, ClaimRequest(section_id=self.section_id, integration_id=self.iid, folder=folder, as_of=_now())
        )
        return SyncFolderRequest(
            sync_id=claim.sync_id, integration_id=self.iid, folder=folder, generation=claim.generation,
            max_rejected_rows=max_rejected_rows, batch_size=batch_size,
        )  # fmt: skip

    def finish(self, req: SyncFolderRequest, result: SyncFolderResult) -> None:
        env = ActivityEnvironment()
        env.run(self.acts.finish, FinishSyncRequest(sync_id=req.sync_id, result=result, as_of=_now()))
        env.run(self.acts.cleanup, CleanupRequest(integration_id=self.iid))


async def test_interrupted_file_sync_resumes_from_heartbeat(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """A sync attempt that dies mid-file resumes at its last heartbeat: no row lost, none counted twice."""
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-04-01_00-00"
    rows = [f"p{i}@example.com" for i in range(9)]
    rows[4] = "broken"
    _upload(provisioned, folder, _csv("email", *rows))
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request(folder, batch_size=3)
    beats, later, result = crash_then_resume(direct.acts.sync_folder, req)
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == (
        "staged",
        8,
        1,
        10,
    )
    assert later[0]["line"] > beats[-1]["line"]  # it did not start over
    assert _set_rows(store, iid, req.generation) == (8, 8) and _rejected_lines(store, req.sync_id) == [6]


async def test_retry_without_the_last_heartbeat_writes_and_counts_nothing_twice(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """Progress is committed with each batch: an attempt whose heartbeats never arrived (or a later
    run re-claiming the folder) resumes from the database, so rows and counts come out exact."""
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-04-02_00-00"
    rows = [f"q{i}@example.com" for i in range(10)]
    rows[2], rows[7] = "nope", "q1@example.com"  # a bad row; a value listed twice stays two lines
    _upload(provisioned, folder, _csv("email", *rows))
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request(folder, batch_size=2)
    beats: list[dict[str, Any]] = []

    def die_on_second(*details: Any) -> None:
        beats.append(dict(details[0]))
        if len(beats) == 2:
            raise RuntimeError("worker lost")

    crashing = ActivityEnvironment()
    crashing.on_heartbeat = die_on_second
    with pytest.raises(RuntimeError):
        crashing.run(direct.acts.sync_folder, req)
    with store.session() as s:
        committed = s.get(SubscriberSync, req.sync_id)
        assert committed is not None and committed.lines_read == beats[-1]["line"] > 1
    result = ActivityEnvironment().run(direct.acts.sync_folder, req)  # no heartbeat details at all
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == ("staged", 9, 1, 11)
    assert _set_rows(store, iid, req.generation) == (9, 8) and _rejected_lines(store, req.sync_id) == [4]
    direct.finish(req, result)
    sync = await _synced(api, section, iid, folder)
    assert (sync["state"], sync["rows_accepted"], sync["rows_rejected"]) == ("succeeded", 9, 1)


async def test_crash_after_the_last_batch_resumes_at_end_of_file(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """A crash after the last batch (file without a final newline) resumes at the end: no ranged
    read past it, the set is indexed and staged with the counts of the one pass."""
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-04-03_00-00"
    _upload(provisioned, folder, b"email\r\nr0@example.com\r\nr1@example.com\r\nr2@example.com\r\nr3@example.com")
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request(folder, batch_size=2)
    beats, later, result = crash_then_resume(direct.acts.sync_folder, req)
    assert beats[-1]["line"] == 5 and later[-1]["line"] == 5
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == ("staged", 4, 0, 5)
    assert _set_rows(store, iid, req.generation) == (4, 4)


async def test_failure_after_committed_batches_keeps_previous_set_and_drops_the_new_one(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """Batches loaded before a sync fails (too many bad rows late in the file) are never visible:
    the previous set stays active, and cleanup drops the failed generation's table."""
    iid = (await add_integration(api, section))["id"]
    (a, ua), (b, ub) = [await _person(api, section) for _ in range(2)]
    provisioned = await _sync_now(api, section, iid)
    direct = _Direct(store, settings, section.id, iid)
    first = direct.request("upload_2026-05-01_00-00", batch_size=2)
    _upload(provisioned, first.folder, _csv("email", a, "x1@example.com", "x2@example.com"))
    direct.finish(first, ActivityEnvironment().run(direct.acts.sync_folder, first))
    assert _reachable(store, section, ua) and not _reachable(store, section, ub)
    second = direct.request("upload_2026-05-02_00-00", batch_size=2, max_rejected_rows=1)
    _upload(provisioned, second.folder, _csv("email", b, *[f"y{i}@example.com" for i in range(6)], "bad", "worse"))
    result = ActivityEnvironment().run(direct.acts.sync_folder, second)
    assert (result.state, result.rows_accepted, result.rows_rejected) == ("failed", 7, 2), result
    assert _set_rows(store, iid, second.generation)[0] == 7  # loaded, but not active
    assert _reachable(store, section, ua) and not _reachable(store, section, ub)
    direct.finish(second, result)
    assert _reachable(store, section, ua) and not _reachable(store, section, ub)
    assert _set_tables(store, iid) == [set_table_name(iid, first.generation)]
    assert _rejected_lines(store, second.sync_id) == [9, 10]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_seal_helpers_keep_file_order_counts_and_the_exact_rejection_limit(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """With slices sealed by helper processes (several in flight), results apply in file order: a
    crash resumes exactly, and the sync fails at exactly the rejection over the limit."""
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    direct = _Direct(store, settings, section.id, iid, helpers=True)
    good = direct.request("upload_2026-06-01_00-00", batch_size=3)
    _upload(provisioned, good.folder, _csv("email", *[f"h{i}@example.com" for i in range(20)], "oops"))
    beats, later, result = crash_then_resume(direct.acts.sync_folder, good)
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == ("staged", 20, 1, 22)
    assert _set_rows(store, iid, good.generation) == (20, 20) and _rejected_lines(store, good.sync_id) == [22]
    direct.finish(good, result)
    rows = [f"k{i}@example.com" for i in range(40)]
    for i in (5, 13, 22, 23, 30):
        rows[i] = f"bad{i}"
    bad = direct.request("upload_2026-06-02_00-00", batch_size=4, max_rejected_rows=3)
    _upload(provisioned, bad.folder, _csv("email", *rows))
    result = ActivityEnvironment().run(direct.acts.sync_folder, bad)
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == ("failed", 20, 4, 25)
    assert _rejected_lines(store, bad.sync_id) == [7, 15, 24, 25]
    direct.finish(bad, result)
    assert _set_tables(store, iid) == [set_table_name(iid, good.generation)]
