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
from sqlmodel import func, select
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.subscribers import SubscriberActivities
from security.crypto import SecretBox
from settings import Settings
from store.engine import Store
from store.reachability import reach
from store.subscriber_tables import SubscriberEntry, SubscriberRejection
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
from workflows.subscriber_models import ClaimRequest, SyncFolderRequest, SyncInput
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
    with store.session() as s:  # the half-staged generation was dropped
        gens = s.exec(
            select(SubscriberEntry.generation).where(SubscriberEntry.integration_id == iid).distinct()
        ).all()
    assert len(gens) == 1


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
    acts = SubscriberActivities(store, settings, SecretBox(settings.secret_keys))
    claim = ActivityEnvironment().run(
        acts.claim, ClaimRequest(section_id=section.id, integration_id=iid, folder=folder, as_of=_now())
    )
    req = SyncFolderRequest(
        sync_id=claim.sync_id, integration_id=iid, folder=folder, generation=claim.generation,
        max_rejected_rows=100, batch_size=3,
    )  # fmt: skip
    beats, later, result = crash_then_resume(acts.sync_folder, req)
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == (
        "staged",
        8,
        1,
        10,
    )
    assert later[0]["line"] > beats[-1]["line"]  # it did not start over
    with store.session() as s:
        staged = s.exec(
            select(func.count()).where(
                SubscriberEntry.integration_id == iid, SubscriberEntry.generation == claim.generation
            )
        ).one()
        lines = s.exec(
            select(SubscriberRejection.line).where(SubscriberRejection.sync_id == claim.sync_id)
        ).all()
    assert staged == 8 and list(lines) == [6]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
