"""Exactly-once delivery: a worker killed between the provider's acceptance and the record."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from settings import Settings
from store.engine import Store
from store.tables import Send
from tests.helpers import (
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    eventually,
    journey_result,
    make_section,
    reachable_user,
)
from tests.provider_server import ProviderServer, Reply
from worker import build_worker

ROOT = Path(__file__).resolve().parents[2]


def kill_settings(settings: Settings) -> Settings:
    return Settings(
        data_dir=settings.data_dir,
        database_url=settings.effective_database_url,
        allow_private_urls=True,
        task_queue="rejoin-kill-" + secrets.token_hex(4),
        admin_key="test-admin-key",
        secret_key=",".join(settings.secret_keys),
        delivery_timeout="PT3S",  # type: ignore[arg-type]
    )


def spawn_worker(env: WorkflowEnvironment, s: Settings) -> subprocess.Popen[str]:
    vars_ = {
        **os.environ,
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": env.client.namespace,
        "REJOIN_DATABASE_URL": s.effective_database_url,
        "REJOIN_DATA_DIR": str(s.data_dir),
        "REJOIN_TASK_QUEUE": s.task_queue,
        "REJOIN_SECRET_KEY": s.secret_key,
        "REJOIN_ALLOW_PRIVATE_URLS": "true",
        "REJOIN_DELIVERY_TIMEOUT": "PT3S",
    }
    proc = subprocess.Popen([sys.executable, "-m", "tests.worker_proc"], cwd=ROOT, env=vars_,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    return proc


async def test_worker_killed_after_provider_accepted_is_not_delivered_twice(
    env: WorkflowEnvironment, settings: Settings, store: Store, fresh_provider: ProviderServer
) -> None:
    """The repeat carries the same key, the provider delivers once, and the send is flagged possible_duplicate."""
    ks = kill_settings(settings)
    app = create_app(ks, store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test", timeout=60) as api:
        sec = await make_section(api, "kill")
        await add_integration(api, sec, kind="custom_http", config={"url": fresh_provider.url("/kill")})
        # The provider accepts (counts the delivery) but answers only after the worker is dead.
        fresh_provider.script("/kill", Reply(200, {"ok": True}, delay=20))
        cid = await create_campaign(api, sec, cart_campaign(wait="PT1H"))
        dyid, uid = await reachable_user(api, sec)
        proc = await asyncio.to_thread(spawn_worker, env, ks)
        try:
            await collect(api, sec, dyid, add_to_cart("sku-k"))
            result_task = asyncio.create_task(journey_result(env.client, sec, cid, uid, timeout=90))

            async def provider_got_it() -> None:
                assert len(fresh_provider.to("/kill")) == 1

            await eventually(provider_got_it, timeout=60)
        finally:
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
        with store.session() as s:
            (before,) = s.exec(select(Send).where(Send.section_id == sec.id)).all()
            assert before.status == "in_flight"  # the acceptance was never recorded
        async with build_worker(env.client, ks, store) as w, w:
            result = await result_task
    sent = [d for d in result.decisions if d.outcome == "sent"]
    assert len(sent) == 1 and sent[0].possible_duplicate, result
    reqs = fresh_provider.to("/kill")
    assert len(reqs) == 2 and reqs[0].headers["idempotency-key"] == reqs[1].headers["idempotency-key"]
    assert len(fresh_provider.deliveries) == 1  # the provider honoured the key: one message
    with store.session() as s:
        (record,) = s.exec(select(Send).where(Send.section_id == sec.id)).all()
    assert record.status == "accepted" and record.possible_duplicate and record.attempts == 2
