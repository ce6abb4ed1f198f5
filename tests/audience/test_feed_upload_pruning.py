"""Uploaded feed files are deleted once their syncs ended, keeping the feed's newest few: a shop
uploading hourly must not fill the object store (or a single host's disk), and a file that a running or
retrying sync still reads is never deleted."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from activities.feeds import KEEP_UPLOADS, prune_uploads
from settings import Settings
from store import objects
from store.engine import Store
from store.feed_tables import Feed, FeedSync
from store.tables import now_utc
from tests.audience.feed_helpers import create_feed, csv_bytes, upload_feed
from tests.helpers import SectionKeys, api_with
from worker import build_worker

HEADER = "sku,name,price,in_stock"


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _sync_keys(store: Store, feed_id: str) -> dict[str, str]:
    """object key -> state of each sync of the feed."""
    with store.session() as s:
        rows = s.exec(select(FeedSync).where(FeedSync.feed_id == feed_id)).all()
    return {r.object_key: r.state for r in rows if r.object_key}


async def _upload_outcomes(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, feed: str,
    stored: Any,
) -> None:
    """Five uploads ending succeeded, rejected, succeeded, refused, succeeded: after each, the store holds
    the newest KEEP_UPLOADS of the feed's files (every sync there has ended)."""
    files = [
        (csv_bytes(HEADER, "a,A,10,true", "b,B,20,true"), "succeeded"),
        (csv_bytes("name,price", "A,10"), "rejected"),  # no sku column
        (csv_bytes(HEADER, "a,A,11,true", "b,B,20,true"), "succeeded"),
        (csv_bytes(HEADER), "refused"),  # would remove every product
        (csv_bytes(HEADER, "a,A,12,true", "b,B,21,true"), "succeeded"),
    ]
    for n, (content, outcome) in enumerate(files, start=1):
        summary = await upload_feed(api, env.client, section, feed, content)
        assert summary.state == outcome, summary
        keys = _sync_keys(store, feed)
        assert len(keys) == n and outcome in keys.values()
        assert stored() == sorted(keys)[-KEEP_UPLOADS:], (n, keys)


async def test_s3_uploads_are_deleted_after_their_syncs_keeping_the_newest(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store
) -> None:
    feed = await create_feed(api, section)
    prefix = objects.upload_prefix(section.id, feed)
    s3 = objects.client(settings)

    def stored() -> list[str]:
        answer = s3.list_objects_v2(Bucket=settings.subscriber_bucket, Prefix=prefix)
        return sorted(o["Key"] for o in answer.get("Contents", []))

    await _upload_outcomes(api, env, section, store, feed, stored)


def _no_s3(settings: Settings, data_dir: Path) -> Settings:
    """What `bin/dev` runs with: no S3, the local object store under a data dir of its own."""
    base = settings.model_dump(
        include={"database_url", "admin_key", "allow_private_urls", "delivery_timeout", "workflow_sandbox"}
    )
    return Settings(
        **base, secret_key=",".join(settings.secret_keys), data_dir=data_dir, s3_endpoint_url="",
        s3_access_key_id="", s3_secret_access_key="", task_queue="rejoin-test-local-" + secrets.token_hex(4),
    )  # fmt: skip




async def test_local_uploads_are_deleted_after_their_syncs_keeping_the_newest(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    tmp_path: Path,
) -> None:
    local = _no_s3(settings, tmp_path)
    async with build_worker(env.client, local, store) as w, w, api_with(local, store, env) as dev_api:
        feed = await create_feed(dev_api, section)
        root = tmp_path / "objects" / local.subscriber_bucket

        def stored() -> list[str]:
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

        await _upload_outcomes(dev_api, env, section, store, feed, stored)


def _feed(store: Store) -> Feed:
    feed = Feed(
        id="feed_" + secrets.token_hex(6), section_id="sec_" + secrets.token_hex(4), kind="product", name="p",
        source="upload", created_at=now_utc(),
    )  # fmt: skip
    with store.session() as s:
        s.add(feed)
    return feed


def _put(store: Store, uploads: objects.Uploads, feed: Feed, hours_ago: float, state: str | None) -> str:
    """An uploaded file of the feed from `hours_ago`, with a sync in `state` (None: no sync began)."""
    key = objects.upload_key(feed.section_id, feed.id, now_utc() - timedelta(hours=hours_ago))
    tmp = Path(f"/tmp/{secrets.token_hex(6)}.csv")
    tmp.write_bytes(csv_bytes(HEADER))
    with tmp.open("rb") as body:
        uploads.put(key, body)
    tmp.unlink()
    if state is not None:
        with store.session() as s:
            s.add(
                FeedSync(
                    id="fsync_" + secrets.token_hex(8), feed_id=feed.id, section_id=feed.section_id, object_key=key,
                    state=state, started_at=now_utc(),
                )
            )  # fmt: skip
    return key


def test_files_of_running_syncs_newer_files_and_young_orphans_are_kept(store: Store, tmp_path: Path) -> None:
    uploads = objects.LocalUploads(tmp_path)
    feed = _feed(store)
    old_orphan = _put(store, uploads, feed, 72, None)  # its upload's sync never started: left for a day
    retrying = _put(store, uploads, feed, 10, "running")  # a sync still reading (or to retry) it
    failed = _put(store, uploads, feed, 9, "failed")
    finished = _put(store, uploads, feed, 8, "succeeded")
    young_orphan = _put(store, uploads, feed, 7, None)  # uploaded, its sync not begun yet
    ended_newer = _put(store, uploads, feed, 6, "rejected")
    newest = [_put(store, uploads, feed, h, "running") for h in (3, 2, 1)]

    prune_uploads(store, uploads, feed.id, finished)
    # Strictly older than the sync that ended, not in use, not among the newest: the failed one and the orphan.
    assert uploads.keys(objects.upload_prefix(feed.section_id, feed.id)) == sorted(
        [retrying, finished, young_orphan, ended_newer, *newest]
    )

    prune_uploads(store, uploads, feed.id, newest[0])
    # The finished file is old now; the running sync's file and the young orphan stay.
    assert uploads.keys(objects.upload_prefix(feed.section_id, feed.id)) == sorted(
        [retrying, young_orphan, *newest]
    )
    assert old_orphan not in uploads.keys(objects.upload_prefix(feed.section_id, feed.id))


class _Refusing(objects.LocalUploads):
    """A store whose deletions fail (permissions, a store down)."""

    def delete(self, keys: list[str]) -> dict[str, str]:
        return dict.fromkeys(keys, "AccessDenied")


class _Down(objects.LocalUploads):
    def keys(self, prefix: str) -> list[str]:
        raise objects.ObjectStoreUnavailable("the object store is unavailable")


def test_deletion_failures_are_logged_not_raised(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed = _feed(store)
    refusing = _Refusing(tmp_path)
    keys = [_put(store, refusing, feed, h, "succeeded") for h in (5, 4, 3, 2, 1)]
    with caplog.at_level(logging.WARNING, logger="activities.feeds"):
        prune_uploads(store, refusing, feed.id, keys[-1])
        prune_uploads(store, _Down(tmp_path), feed.id, keys[-1])
    assert refusing.keys(objects.upload_prefix(feed.section_id, feed.id)) == keys
    text = caplog.text
    assert keys[0] in text and "AccessDenied" in text, text
    assert "unavailable" in text, text
