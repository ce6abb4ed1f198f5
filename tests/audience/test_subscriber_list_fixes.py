"""Subscriber-list sync defects found in testing: a list replaced mid-sync, phone numbers without
"+", unclosed quotes, CR-only line endings. S3 is moto on loopback (the `s3` fixture)."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlalchemy import select as sa_select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.streams import MixedLineEnds, line_blocks
from domain import subscribers as rules
from domain.hashing import phone_hash
from security.crypto import SecretBox, sealed_token
from settings import Settings
from store import objects
from store.engine import Store
from store.set_copy import KEY_BYTES
from store.subscriber_tables import SubscriberSync, set_table_name, subscriber_set
from tests.audience.feed_helpers import crash_then_resume
from tests.audience.test_subscribers import _csv, _Direct, _rejected_lines, _sync_now, _synced, _upload
from tests.helpers import SectionKeys, add_integration
from workflows.subscriber_models import SyncFolderRequest


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _entries(store: Store, settings: Settings, iid: str, generation: int) -> list[tuple[bytes, str]]:
    """(key, decrypted value) of every row of one generation's set, sorted."""
    box, t = SecretBox(settings.secret_keys), subscriber_set(set_table_name(iid, generation))
    with store.session() as s:
        rows = s.connection().execute(sa_select(t.c.value_hash, t.c.value_enc)).all()
    return sorted((bytes(h), box.decrypt(sealed_token(bytes(v)))) for h, v in rows)


def _key(normalised: str) -> bytes:
    return hashlib.sha256(normalised.encode()).digest()[:KEY_BYTES]


def _emails(*values: str) -> list[tuple[bytes, str]]:
    return sorted((_key(v.lower()), v) for v in values)


def _die_at_second_heartbeat(fn: Any, req: SyncFolderRequest) -> None:
    """An attempt killed (as by kill -9) after its first batches were committed."""
    beats: list[Any] = []

    def die(*details: Any) -> None:
        beats.append(details)
        if len(beats) == 2:
            raise RuntimeError("worker lost")

    env = ActivityEnvironment()
    env.on_heartbeat = die
    with pytest.raises(RuntimeError):
        env.run(fn, req)


# Defect 1: a list replaced in S3 during a sync must not be spliced (head of A + tail of B).

A_ROWS = [f"a{i}@example.com" for i in range(12)]
B_ROWS = [f"somebody-else-{i}92@other.org" for i in range(9)] + ["bad row"]


async def test_list_replaced_mid_sync_is_read_again_from_its_start(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    """The resume after a crash finds another object (ETag) under data.csv: the rows, counters and
    rejections of the first file are discarded and the new file is read whole, not from the old offset."""
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-07-01_00-00"
    _upload(provisioned, folder, _csv("email", *A_ROWS[:5], "nope", *A_ROWS[5:]))
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request(folder, batch_size=3)
    _die_at_second_heartbeat(direct.acts.sync_folder, req)
    with store.session() as s:
        committed = s.get(SubscriberSync, req.sync_id)
        assert committed is not None and committed.resume_offset > 0 and committed.rows_rejected == 1
    _upload(provisioned, folder, _csv("email", *B_ROWS))  # the customer replaces the file
    result = ActivityEnvironment().run(direct.acts.sync_folder, req)
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == ("staged", 9, 1, 11)
    assert _entries(store, settings, iid, req.generation) == _emails(*B_ROWS[:9])  # no row of A, no fragment
    assert _rejected_lines(store, req.sync_id) == [11]  # A's bad line 7 is forgotten
    direct.finish(req, result)
    sync = await _synced(api, section, iid, folder)
    assert (sync["state"], sync["rows_accepted"], sync["rows_rejected"]) == ("succeeded", 9, 1)


class _ReplacedAfterHead:
    """An S3 client whose object is replaced right after the sync's HEAD (the race before the GET)."""

    def __init__(self, real: Any, bucket: str, key: str, body: bytes) -> None:
        self.real, self.bucket, self.key, self.body = real, bucket, key, body

    def head_object(self, **kw: Any) -> Any:
        head = self.real.head_object(**kw)
        self.real.put_object(Bucket=self.bucket, Key=self.key, Body=self.body)
        return head

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_list_replaced_between_head_and_ranged_get_is_not_spliced(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resumed read asks for the ETag it checked (If-Match): a file replaced after that check
    fails the attempt (retryable), and the retry starts the new file over."""
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-07-02_00-00"
    _upload(provisioned, folder, _csv("email", *A_ROWS))
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request(folder, batch_size=3)
    _die_at_second_heartbeat(direct.acts.sync_folder, req)
    loc = provisioned["location"]
    real = objects.client(settings)
    racing = _ReplacedAfterHead(real, loc["bucket"], f"{loc['prefix']}{folder}/data.csv", _csv("email", *B_ROWS))
    with monkeypatch.context() as m:
        m.setattr(objects, "client", lambda *a, **k: racing)
        with pytest.raises(ApplicationError) as failed:
            ActivityEnvironment().run(direct.acts.sync_folder, req)
    assert failed.value.type == "SourceChanged" and not failed.value.non_retryable
    result = ActivityEnvironment().run(direct.acts.sync_folder, req)  # Temporal's retry
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == ("staged", 9, 1, 11)
    assert _entries(store, settings, iid, req.generation) == _emails(*B_ROWS[:9])


# Defect 2: phone numbers are stored, hashed and sent in E.164 with their "+".

PHONES = ["15551230000", "+15551230001", "447700900123", "+1 555 123 0002", "+44 (20) 7946-0000", "555-1234"]
E164 = ["+15551230000", "+15551230001", "+447700900123", "+15551230002", "+442079460000"]


@pytest.mark.parametrize("helpers", [False, True])
async def test_listed_phone_numbers_are_stored_in_e164_like_api_opt_ins(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings, helpers: bool
) -> None:
    """Digits without "+" (the list format: country code first) and numbers written with separators
    after a "+" are stored as "+digits", keyed by the API's hash of that; the sealing path (helper
    processes and the compiled sealer on PostgreSQL, in-process otherwise) makes no difference."""
    iid = (await add_integration(api, section, channel="sms"))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-07-03_00-00" if helpers else "upload_2026-07-04_00-00"
    _upload(provisioned, folder, _csv("phone numbers", *PHONES))
    direct = _Direct(store, settings, section.id, iid, helpers=helpers)
    req = direct.request(folder, batch_size=100)
    result = ActivityEnvironment().run(direct.acts.sync_folder, req)
    assert (result.state, result.rows_accepted, result.rows_rejected) == ("staged", 5, 1)
    assert _rejected_lines(store, req.sync_id) == [7]  # 7 digits: too short for E.164
    want = sorted((bytes.fromhex(phone_hash(v))[:KEY_BYTES], v) for v in E164)
    assert _entries(store, settings, iid, req.generation) == want


def test_phone_rows_are_e164_on_the_bulk_path_and_line_by_line() -> None:
    """The bulk path (plain digits) and the line-by-line path (a slice with a separator) give the
    same "+" values and hashes."""
    plain = rules.parse_lines("phone", [b"15551230000", b"+15551230001"], 2, 0)
    assert rules._fast("phone", [b"15551230000", b"+15551230001"], True) is not None
    mixed = rules.parse_lines("phone", [b"15551230000", b"+15551230001", b"+1 555 123 0002"], 2, 0)
    assert plain.values == mixed.values[:2] == [b"+15551230000", b"+15551230001"]
    assert mixed.values[2] == b"+15551230002"
    assert plain.hashes == [bytes.fromhex(phone_hash(v)) for v in ("+15551230000", "+15551230001")]
    assert rules.row_value("phone", ["15551230000"]) == ("+15551230000", phone_hash("+15551230000"))


# Defect 3: an unclosed quote is a bad row.


async def test_unclosed_quote_is_a_rejected_row_with_its_line(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-07-05_00-00"
    _upload(provisioned, folder, _csv("email", "ok@ex.com", '"unterminated@ex.com', '"quoted@ex.com"'))
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request(folder, batch_size=100)
    result = ActivityEnvironment().run(direct.acts.sync_folder, req)
    assert (result.state, result.rows_accepted, result.rows_rejected) == ("staged", 2, 1)
    assert _rejected_lines(store, req.sync_id) == [3]
    assert _entries(store, settings, iid, req.generation) == _emails("ok@ex.com", "quoted@ex.com")
    got = rules.parse_lines("email", [b'"unterminated@ex.com'], 2, 10)
    assert not got.values and got.rejections[0][0] == 2 and "malformed CSV" in got.rejections[0][1]


# Defect 4: lines ending with CR only (classic Mac) are lines.


async def test_cr_only_line_endings_are_accepted_and_resume(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    iid = (await add_integration(api, section))["id"]
    provisioned = await _sync_now(api, section, iid)
    folder = "upload_2026-07-06_00-00"
    rows = [f"mac{i}@example.com" for i in range(7)]
    _upload(provisioned, folder, "\r".join(["email", *rows[:3], "bad", *rows[3:]]).encode() + b"\r")
    direct = _Direct(store, settings, section.id, iid)
    req = direct.request(folder, batch_size=2)
    beats, later, result = crash_then_resume(direct.acts.sync_folder, req)
    assert later[0]["line"] > beats[-1]["line"]  # resumed mid-file, still splitting at CRs
    assert (result.state, result.rows_accepted, result.rows_rejected, result.lines_read) == ("staged", 7, 1, 9)
    assert _rejected_lines(store, req.sync_id) == [5]
    assert _entries(store, settings, iid, req.generation) == _emails(*rows)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1 << 20])
def test_line_blocks_split_cr_lf_and_crlf_files_alike(size: int) -> None:
    """Whatever the chunking, CR-only, LF and CRLF files give the same lines and end offsets."""
    for end in (b"\r", b"\n", b"\r\n"):
        data = end.join([b"email", b"a@b.co", b"", b"c@d.co"]) + end + b"e@f.co"
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        lines = [ln.rstrip(b"\r") for block, _ in line_blocks(iter(chunks), 0) for ln in block]
        assert lines == [b"email", b"a@b.co", b"", b"c@d.co", b"e@f.co"], (end, size)
        assert list(line_blocks(iter(chunks), 0))[-1][1] == len(data)
    with pytest.raises(MixedLineEnds):
        list(line_blocks(iter([b"email\ra@b.co\r", b"c@d.co\n"]), 0))
