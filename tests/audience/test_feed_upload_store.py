"""Where uploaded feed files go: the local store when no S3 is configured (`bin/dev`), a clear 503
when a configured S3 cannot be reached, never a 500."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from store.engine import Store
from tests.audience.feed_helpers import create_feed, csv_bytes, feed_syncs, get_product, upload_feed
from tests.helpers import SectionKeys, add_integration, api_with
from worker import build_worker

HEADER = "sku,name,url,price,image_url,categories,in_stock"


def _variant(settings: Settings, **changes: Any) -> Settings:
    """The session's settings (same database, keys) with the object store changed."""
    base = settings.model_dump(
        include={"database_url", "admin_key", "allow_private_urls", "delivery_timeout", "workflow_sandbox"}
    )
    # The same encryption keys whatever data_dir the variant has: the store is shared.
    return Settings(**base, secret_key=",".join(settings.secret_keys), **changes)


def _no_s3(settings: Settings, data_dir: Path) -> Settings:
    """What `bin/dev` runs with: no S3 endpoint, no keys, a data dir of its own."""
    return _variant(
        settings, data_dir=data_dir, s3_endpoint_url="", s3_access_key_id="", s3_secret_access_key="",
        task_queue="rejoin-test-local-" + secrets.token_hex(4),
    )  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on return: nothing listens there




async def test_upload_without_s3_is_kept_locally_and_synced(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    tmp_path: Path,
) -> None:
    """With no S3 configured, an uploaded feed file lands under data_dir/objects and the sync
    (a worker with the same settings) reads it from there and applies its rows."""
    local = _no_s3(settings, tmp_path)
    async with build_worker(env.client, local, store) as w, w, api_with(local, store, env) as dev_api:
        feed = await create_feed(dev_api, section)
        sku = "local-" + secrets.token_hex(3)
        content = csv_bytes(HEADER, f"{sku},Shoe,https://shop.test/1,100,,Shoes,true", "bad,Hat,,abc,,,")
        summary = await upload_feed(dev_api, env.client, section, feed, content)
        assert summary.state == "succeeded", summary
        sync = (await feed_syncs(dev_api, section, feed))[0]
        assert (sync["rows_accepted"], sync["rows_rejected"]) == (1, 1), sync
        product = await get_product(dev_api, section, sku)
        assert product["price"] == 100 and product["name"] == "Shoe"
    kept = list((tmp_path / "objects").rglob("*.csv"))
    assert [p.read_bytes() for p in kept] == [content], kept


async def test_unreachable_s3_is_a_503_naming_the_store(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    tmp_path: Path,
) -> None:
    """A configured S3 that nobody answers (a closed loopback port) makes the upload a 503 whose
    message names the endpoint and says it is unavailable, not an Internal Server Error."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    broken = _variant(
        settings, data_dir=tmp_path, s3_endpoint_url=endpoint, s3_access_key_id="k", s3_secret_access_key="s",
        task_queue="rejoin-test-broken-" + secrets.token_hex(4),
    )  # fmt: skip
    async with api_with(broken, store, env) as broken_api:
        feed = await create_feed(broken_api, section)
        r = await broken_api.put(f"/api/v1/feeds/{feed}/file", content=csv_bytes(HEADER), headers=section.mgmt)
    assert r.status_code == 503, r.text
    assert endpoint in r.json()["error"] and "unavailable" in r.json()["error"], r.text


@pytest.mark.parametrize("configured", [False, True], ids=["no-s3", "unreachable-s3"])
async def test_subscriber_list_without_usable_s3_is_a_503(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    tmp_path: Path, configured: bool,
) -> None:
    """Subscriber lists are uploaded by customers straight into S3, so the local store cannot
    serve them: "Sync now" without S3, or with an S3 nobody answers, is a 503 saying what is missing."""
    endpoint = f"http://127.0.0.1:{_closed_port()}" if configured else ""
    variant = _variant(
        settings, data_dir=tmp_path, s3_endpoint_url=endpoint, s3_access_key_id="k" if configured else "",
        s3_secret_access_key="s" if configured else "", task_queue="rejoin-test-subs-" + secrets.token_hex(4),
    )  # fmt: skip
    iid = (await add_integration(api, section))["id"]
    async with api_with(variant, store, env) as variant_api:
        r = await variant_api.post(f"/api/v1/integrations/{iid}/subscribers/sync", headers=section.mgmt)
    assert r.status_code == 503, r.text
    assert (endpoint if configured else "REJOIN_S3_ENDPOINT_URL") in r.json()["error"], r.text


async def test_subscriber_list_with_the_store_set_local_names_that_setting(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, settings: Settings, store: Store,
    tmp_path: Path,
) -> None:
    """An S3 endpoint and keys set, but `REJOIN_OBJECT_STORE=local`: the 503 names that setting, the
    cause, not the endpoint and keys already there (before: "set REJOIN_S3_ENDPOINT_URL and keys")."""
    variant = _variant(
        settings, data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:9", s3_access_key_id="k",
        s3_secret_access_key="s", object_store="local", task_queue="rejoin-test-subs-" + secrets.token_hex(4),
    )  # fmt: skip
    iid = (await add_integration(api, section))["id"]
    async with api_with(variant, store, env) as variant_api:
        r = await variant_api.post(f"/api/v1/integrations/{iid}/subscribers/sync", headers=section.mgmt)
    assert r.status_code == 503 and "REJOIN_OBJECT_STORE=local" in r.json()["error"], r.text
