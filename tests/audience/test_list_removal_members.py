"""A subscriber list's safety valve counts the members a file would remove (active members the file does
not list), not the difference of sizes: a wrong export of as many (or more) other people is refused.
S3 is moto on loopback (the `s3` fixture); the sync's activities are called one by one."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from sqlalchemy import update
from temporalio.testing import ActivityEnvironment

from settings import Settings
from store.engine import Store
from store.set_copy import KEY_BYTES
from store.subscriber_tables import set_table_name, subscriber_set
from tests.audience.test_subscribers import _csv, _Direct, _person, _reachable, _status, _sync_now, _upload
from tests.helpers import SectionKeys, add_integration
from workflows.subscriber_models import SyncFolderResult

OLD = [f"old{i}@example.com" for i in range(4)]
OTHERS = [f"other{i}@example.com" for i in range(10)]


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


async def _list_of(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, emails: list[str]
) -> tuple[_Direct, dict[str, object], int]:
    """An integration whose active list holds `emails` (synced from its first folder); its generation."""
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    direct = _Direct(store, settings, section.id, iid)
    _upload(provisioned, "upload_2026-07-01_08-00", _csv("email", *emails))
    req = direct.request("upload_2026-07-01_08-00", batch_size=100)
    result = ActivityEnvironment().run(direct.acts.sync_folder, req)
    assert result.state == "staged", result
    direct.finish(req, result)
    return direct, provisioned, req.generation


def _sync(direct: _Direct, provisioned: dict[str, object], folder: str, emails: list[str]) -> SyncFolderResult:
    _upload(provisioned, folder, _csv("email", *emails))
    req = direct.request(folder, batch_size=3)
    result: SyncFolderResult = ActivityEnvironment().run(direct.acts.sync_folder, req)
    direct.finish(req, result)
    return result


async def test_a_file_of_as_many_other_people_is_refused_until_forced(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    people = [await _person(api, section) for _ in range(4)]
    direct, provisioned, _ = await _list_of(api, section, store, settings, [email for email, _ in people])
    swapped = _sync(direct, provisioned, "upload_2026-07-02_08-00", OTHERS[:4])  # same size, other people
    assert (swapped.state, swapped.rows_accepted) == ("refused", 4), swapped
    assert "would remove at least 4 (100%, more than 50%)" in (swapped.error or ""), swapped.error
    assert "force=true" in (swapped.error or "")
    assert all(_reachable(store, section, user) for _, user in people)  # the list kept its members
    assert (await _status(api, section, direct.iid))["last_folder"] == "upload_2026-07-01_08-00"

    r = await api.post(f"/api/v1/integrations/{direct.iid}/subscribers/sync?force=true", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert r.json()["forced"] == ["upload_2026-07-02_08-00"]


async def test_a_bigger_file_dropping_most_members_is_refused(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    direct, provisioned, _ = await _list_of(api, section, store, settings, OLD)
    grown = _sync(direct, provisioned, "upload_2026-07-02_08-00", [OLD[0], *OTHERS])  # 11 rows; 3 of 4 go
    assert (grown.state, grown.rows_accepted) == ("refused", 11), grown
    assert "would remove at least 3 (75%, more than 50%)" in (grown.error or ""), grown.error


async def test_keeping_enough_members_applies(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    direct, provisioned, _ = await _list_of(api, section, store, settings, OLD)
    # Two of four go (50%, not more than the share), two others come: applied.
    kept = _sync(direct, provisioned, "upload_2026-07-02_08-00", [*OLD[2:], *OTHERS[:2]])
    assert kept.state == "staged", kept
    assert (await _status(api, section, direct.iid))["last_folder"] == "upload_2026-07-02_08-00"


async def test_members_of_a_set_with_whole_hashes_are_matched(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """A set written before keys were cut to KEY_BYTES holds whole 32-byte hashes: the same people in a
    new file (16-byte keys) are the same members, not removals."""
    direct, provisioned, generation = await _list_of(api, section, store, settings, OLD)
    table = subscriber_set(set_table_name(direct.iid, generation))
    with store.session() as s:
        for email in OLD:
            digest = hashlib.sha256(email.encode()).digest()
            done = s.connection().execute(
                update(table).where(table.c.value_hash == digest[:KEY_BYTES]).values(value_hash=digest)
            )
            assert done.rowcount == 1
    same = _sync(direct, provisioned, "upload_2026-07-02_08-00", OLD[1:])
    assert same.state == "staged", same  # one of four goes
