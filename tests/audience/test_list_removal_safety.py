"""Subscriber lists: a file that would remove most of the list (header only, truncated) is refused and
applies nothing until forced, as a full product feed is; a missing data.csv names its bucket and key.
S3 is moto on loopback (the `s3` fixture); syncs run through the integration's schedule on the worker."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from settings import Settings
from store.engine import Store
from tests.audience.test_subscribers import _csv, _Direct, _person, _reachable, _status, _sync_now, _upload
from tests.helpers import SectionKeys, add_integration, eventually


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _finished(api: httpx.AsyncClient, sec: SectionKeys, iid: str, folder: str, state: str) -> dict[str, Any]:
    """Wait until the sync of `folder` is in `state`; returns its record. "Sync now" again while waiting:
    a trigger that comes while the previous run still cleans up is skipped (overlap SKIP)."""

    async def done() -> dict[str, Any]:
        await _sync_now(api, sec, iid)
        syncs = {s["folder"]: s for s in (await _status(api, sec, iid))["syncs"]}
        assert folder in syncs and syncs[folder]["state"] == state, syncs
        return dict(syncs[folder])

    return await eventually(done, timeout=30)


async def test_header_only_file_is_refused_keeps_the_list_and_applies_when_forced(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    iid = (await add_integration(api, section))["id"]
    people = [await _person(api, section) for _ in range(4)]
    provisioned = await _sync_now(api, section, iid)
    _upload(provisioned, "upload_2026-03-01_08-00", _csv("email", *[email for email, _ in people]))
    await _sync_now(api, section, iid)
    await _finished(api, section, iid, "upload_2026-03-01_08-00", "succeeded")

    _upload(provisioned, "upload_2026-03-02_08-00", _csv("email"))  # the header alone: an empty export
    await _sync_now(api, section, iid)
    refused = await _finished(api, section, iid, "upload_2026-03-02_08-00", "refused")
    assert "would remove at least 4 (100%, more than 50%)" in refused["error"], refused
    assert "force=true" in refused["error"]
    assert all(_reachable(store, section, user) for _, user in people)  # nothing was removed
    assert (await _status(api, section, iid))["last_folder"] == "upload_2026-03-01_08-00"

    r = await api.post(f"/api/v1/integrations/{iid}/subscribers/sync?force=true", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert r.json()["forced"] == ["upload_2026-03-02_08-00"]
    forced = await _finished(api, section, iid, "upload_2026-03-02_08-00", "succeeded")
    assert (forced["rows_accepted"], forced["error"]) == (0, None)
    assert not any(_reachable(store, section, user) for _, user in people)
    assert (await _status(api, section, iid))["last_folder"] == "upload_2026-03-02_08-00"


async def test_small_removal_passes_and_an_empty_file_on_an_empty_list_is_fine(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    iid = (await add_integration(api, section))["id"]
    people = [await _person(api, section) for _ in range(4)]
    provisioned = await _sync_now(api, section, iid)
    _upload(provisioned, "upload_2026-04-01_08-00", _csv("email"))
    await _sync_now(api, section, iid)
    await _finished(api, section, iid, "upload_2026-04-01_08-00", "succeeded")
    _upload(provisioned, "upload_2026-04-02_08-00", _csv("email", *[email for email, _ in people]))
    await _sync_now(api, section, iid)
    await _finished(api, section, iid, "upload_2026-04-02_08-00", "succeeded")
    # Two of four go: 50% is not more than the allowed share.
    _upload(provisioned, "upload_2026-04-03_08-00", _csv("email", *[email for email, _ in people[2:]]))
    await _sync_now(api, section, iid)
    await _finished(api, section, iid, "upload_2026-04-03_08-00", "succeeded")
    assert [_reachable(store, section, user) for _, user in people] == [False, False, True, True]


async def test_share_is_a_setting_and_refusal_drops_the_refused_load(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """Activities called one by one: with a 10% share, 4 -> 3 is refused; the refused generation's
    table goes with the cleanup and the active one stays."""
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    strict = settings.model_copy(update={"list_max_removal_share": 0.1})
    direct = _Direct(store, strict, section.id, iid)
    emails = [f"p{i}@example.com" for i in range(4)]
    _upload(provisioned, "upload_2026-05-01_08-00", _csv("email", *emails))
    req = direct.request("upload_2026-05-01_08-00", batch_size=100)
    direct.finish(req, ActivityEnvironment().run(direct.acts.sync_folder, req))
    _upload(provisioned, "upload_2026-05-02_08-00", _csv("email", *emails[1:]))
    req2 = direct.request("upload_2026-05-02_08-00", batch_size=100)
    result = ActivityEnvironment().run(direct.acts.sync_folder, req2)
    assert (result.state, result.rows_accepted) == ("refused", 3), result
    assert "would remove at least 1 (25%, more than 10%)" in (result.error or "")
    direct.finish(req2, result)
    status = await _status(api, section, iid)
    assert status["last_folder"] == "upload_2026-05-01_08-00"
    assert [s["state"] for s in status["syncs"]] == ["refused", "succeeded"]
    forced = ActivityEnvironment().run(direct.acts.sync_folder, req2.model_copy(update={"force": True}))
    assert forced.state == "staged"


async def test_missing_data_csv_fails_at_once_naming_bucket_and_key(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request("upload_2026-06-01_08-00", batch_size=100)
    result = ActivityEnvironment().run(direct.acts.sync_folder, req)
    loc = provisioned["location"]
    assert (result.state, result.error) == (
        "failed",
        f"s3://{loc['bucket']}/{loc['prefix']}upload_2026-06-01_08-00/data.csv not found",
    )
