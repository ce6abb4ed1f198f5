"""A subscriber list holding a NUL: a row with one is rejected naming the column (an identifier with a NUL
can never match one the API took: the API refuses NUL), the rest of the file applies, and a header with one
rejects the file with an error that is storable. Before, the header error quoted the NUL, and on PostgreSQL
recording that sync failed with psycopg.DataError (retried, the folder never finished); a custom id with a
NUL was listed."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import ActivityEnvironment

from domain import subscribers as rules
from settings import Settings
from store.engine import Store
from store.subscriber_tables import SubscriberRejection, SubscriberSync
from tests.audience.test_subscribers import _csv, _Direct, _sync_now, _synced, _upload
from tests.helpers import SectionKeys, add_integration


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _reasons(store: Store, sync_id: str) -> dict[int, str]:
    with store.session() as s:
        rows = s.exec(select(SubscriberRejection).where(SubscriberRejection.sync_id == sync_id)).all()
    return {r.line: r.reason for r in rows}


async def test_list_rows_with_a_nul_are_rejected_and_a_nul_header_rejects_the_file(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    _upload(provisioned, "upload_2026-08-01_10-00", b"em\x00ail\nok@ex.com\n")
    _upload(provisioned, "upload_2026-08-01_11-00", _csv("email", "a@ex.com", "b\0ad@ex.com", "c@ex.com"))
    await _sync_now(api, section, iid)
    latest = await _synced(api, section, iid, "upload_2026-08-01_11-00")
    assert (latest["state"], latest["rows_accepted"], latest["rows_rejected"]) == ("succeeded", 2, 1), latest
    reasons = {r["line"]: r["reason"] for r in latest["rejections"]}
    assert list(reasons) == [3] and "email" in reasons[3] and "NUL" in reasons[3], reasons
    first = await _synced(api, section, iid, "upload_2026-08-01_10-00")
    assert first["state"] == "rejected" and "header must be exactly 'email'" in first["error"], first
    assert "\0" not in first["error"] and "\ufffd" in first["error"]  # the NUL shown as U+FFFD
    with store.session() as s:
        errors = [x.error for x in s.exec(select(SubscriberSync)).all()]
    assert not any("\0" in (e or "") for e in errors)


@pytest.mark.parametrize("id_type", ["custom", "email"])
async def test_a_nul_inside_a_value_rejects_the_row_on_both_paths(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, id_type: str
) -> None:
    """Line by line (a slice holding the NUL) the row is rejected with its reason, the others listed."""
    extra = {"identifier_type": id_type}
    iid = (await add_integration(api, section, **extra))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-08-02_00-00"
    header = rules.expected_header(id_type)
    _upload(provisioned, folder, _csv(header, "x1@ex.com", "x\0@ex.com", "x3@ex.com"))
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request(folder, batch_size=100)
    result = ActivityEnvironment().run(direct.acts.sync_folder, req)
    assert (result.state, result.rows_accepted, result.rows_rejected) == ("staged", 2, 1), result
    reasons = _reasons(store, req.sync_id)
    assert list(reasons) == [3] and header in reasons[3] and "NUL" in reasons[3], reasons


def test_row_rule_rejects_nul_and_lone_surrogates() -> None:
    for id_type in ("custom", "email", "phone"):
        for bad in ("a\0b", "a\udc80b"):
            reason = rules.row_value(id_type, [bad])
            assert isinstance(reason, str) and "unstorable" in reason, (id_type, reason)
            assert "\0" not in reason and "\udc80" not in reason
    header = rules.header_error("custom", ["i\0d"])
    assert header is not None and "\0" not in header
    got = rules.parse_lines("custom", [b"ok-1", b"n\x00o", b"ok-2"], 2, 10)
    assert got.values == [b"ok-1", b"ok-2"] and [n for n, _ in got.rejections] == [3]
