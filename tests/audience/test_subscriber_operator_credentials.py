"""Subscriber lists on an S3 without the AWS IAM API (MinIO, the compose topology):
`REJOIN_SUBSCRIBER_CREDENTIALS=operator`.

Rejoin then never calls IAM: "Sync now" provisions the list's location and schedule and syncs what
the customer uploads with credentials the operator gave them (here: the test's own S3 client), its
answer carries no credentials and says the operator issues them; regenerating is a 409 saying why.
S3 and IAM are moto in server mode on loopback (the `s3` fixture), asked directly what was created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from store.engine import Store
from tests.audience.test_subscribers import _person, _reachable, _status, _sync_now, _synced
from tests.helpers import SectionKeys, add_integration, api_with, start_worker_with

FOLDER = "upload_2026-03-02_10-00"


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3




def _operator(settings: Settings) -> Settings:
    return settings.model_copy(update={"subscriber_credentials": "operator"})


def _aws(settings: Settings, service: str) -> Any:
    """The test's own client (the operator's keys: moto's), never one made by Rejoin."""
    return boto3.client(
        service, endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


def _iam_users(settings: Settings) -> list[str]:
    pages = _aws(settings, "iam").get_paginator("list_users").paginate()
    return sorted(u["UserName"] for page in pages for u in page["Users"])


async def test_operator_sync_now_makes_no_iam_user_and_syncs_what_the_customer_uploads(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """Before: "Sync now" created an IAM user and key, which MinIO (no IAM API) cannot do."""
    iid = (await add_integration(api, section))["id"]
    (a, ua), (b, ub) = [await _person(api, section) for _ in range(2)]
    users_before = _iam_users(settings)
    async with api_with(_operator(settings), store, env) as op:
        first = await _sync_now(op, section, iid)
        assert first["credentials"] is None and first["credentials_issued_by"] == "operator", first
        loc = first["location"]
        assert (loc["bucket"], loc["prefix"]) == (settings.subscriber_bucket, f"{section.id}/{iid}/"), loc
        assert (loc["file_name"], loc["header"], loc["endpoint_url"]) == (
            "data.csv", "email", settings.s3_endpoint_url,
        )  # fmt: skip
        # No IAM call made anything: moto's IAM lists the same users as before (none in a lone run).
        users = _iam_users(settings)
        assert users == users_before and f"rejoin-{iid}" not in users, users

        # The customer uploads with the keys the operator gave them.
        _aws(settings, "s3").put_object(
            Bucket=loc["bucket"], Key=f"{loc['prefix']}{FOLDER}/data.csv", Body=f"email\n{a}\n".encode()
        )
        again = await _sync_now(op, section, iid)
        assert again["credentials"] is None and again["credentials_issued_by"] == "operator", again
        sync = await _synced(op, section, iid, FOLDER)
        assert (sync["state"], sync["rows_accepted"], sync["rows_rejected"]) == ("succeeded", 1, 0), sync
        assert _reachable(store, section, ua) and not _reachable(store, section, ub)

        status = await _status(op, section, iid)
        assert status["credentials_issued_by"] == "operator" and status["last_folder"] == FOLDER, status
        assert (status["access_key_id"], status["regenerations_left"]) == (None, 0), status
    assert _iam_users(settings) == users_before


async def test_operator_regenerate_is_a_409_naming_the_operator(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """Before: the route called IAM (a 5xx/503 on MinIO); now a 409 saying who issues credentials."""
    iid = (await add_integration(api, section))["id"]
    users_before = _iam_users(settings)
    async with api_with(_operator(settings), store, env) as op:
        url = f"/api/v1/integrations/{iid}/subscribers/credentials"
        r = await op.post(url, headers=section.mgmt)  # no list yet: the reason is still the operator
        assert r.status_code == 409 and "REJOIN_SUBSCRIBER_CREDENTIALS=operator" in r.json()["error"], r.text
        loc = (await _sync_now(op, section, iid))["location"]
        for _ in range(3):  # never counts down to "contact support": Rejoin issues none
            r = await op.post(url, headers=section.mgmt)
            assert r.status_code == 409, r.text
            error = r.json()["error"]
            assert "issued by the operator" in error and f"s3://{loc['bucket']}/{loc['prefix']}" in error, error
    assert _iam_users(settings) == users_before


async def test_iam_mode_is_unchanged_and_says_rejoin_issued_the_key(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings
) -> None:
    assert settings.subscriber_credentials == "iam"
    iid = (await add_integration(api, section))["id"]
    first = await _sync_now(api, section, iid)
    assert first["credentials_issued_by"] == "rejoin" and first["credentials"]["secret_access_key"], first
    assert first["credentials"]["regenerations_left"] == 1
    assert f"rejoin-{iid}" in _iam_users(settings)
    status = await _status(api, section, iid)
    assert status["credentials_issued_by"] == "rejoin", status
    assert status["access_key_id"] == first["credentials"]["access_key_id"], status


async def test_a_list_provisioned_by_the_operator_gets_rejoins_first_key_after_switching_to_iam(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    """Moving from MinIO to AWS (operator -> iam): regenerate issues the list's first key, which uploads."""
    iid = (await add_integration(api, section))["id"]
    async with api_with(_operator(settings), store, env) as op:
        await _sync_now(op, section, iid)
    r = await api.post(f"/api/v1/integrations/{iid}/subscribers/credentials", headers=section.mgmt)
    assert r.status_code == 200, r.text
    creds = r.json()
    assert creds["regenerations_left"] == 1 and f"rejoin-{iid}" in _iam_users(settings), creds
    status = await _status(api, section, iid)
    assert status["credentials_issued_by"] == "rejoin" and status["access_key_id"] == creds["access_key_id"]
    s3 = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
    )  # fmt: skip
    loc = status["location"]
    s3.put_object(Bucket=loc["bucket"], Key=f"{loc['prefix']}{FOLDER}/data.csv", Body=b"email\n")


def test_the_setting_reads_the_environment_and_refuses_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REJOIN_SUBSCRIBER_CREDENTIALS", raising=False)
    assert Settings().subscriber_credentials == "iam"
    for good in ("iam", "operator"):
        monkeypatch.setenv("REJOIN_SUBSCRIBER_CREDENTIALS", good)
        assert Settings().subscriber_credentials == good
    for bad in ("minio", "", "IAM ", "none"):
        monkeypatch.setenv("REJOIN_SUBSCRIBER_CREDENTIALS", bad)
        with pytest.raises(ValidationError, match="REJOIN_SUBSCRIBER_CREDENTIALS must be iam .* or operator"):
            Settings()


def test_a_worker_with_a_bad_value_refuses_to_start(tmp_path: Path) -> None:
    """`rejoin worker` stops at once, naming the setting and its values, before it connects anywhere."""
    done = start_worker_with("REJOIN_SUBSCRIBER_CREDENTIALS", "minio", tmp_path)
    assert done.returncode != 0
    assert "REJOIN_SUBSCRIBER_CREDENTIALS must be iam" in done.stderr and "'minio'" in done.stderr, done.stderr[-2000:]
