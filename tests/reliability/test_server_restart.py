"""Temporal killed during a journey's long wait and restarted from its SQLite file: it resumes.

Uses its own dev server (not the session one) with a persisted database, killed with SIGKILL
mid-wait. After the restart the same worker and API client carry on (they reconnect), the
journey resumes from its history and every later step is sent exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import TimeSkipper

from api.main import create_app
from runtime.dev_server import dev_server_args, wait_until_serving
from settings import Settings
from store.engine import Store
from tests.helpers import (
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    make_section,
    outbox,
    reachable_user,
    step,
)
from worker import build_worker
from workflows.ids import journey_workflow_id
from workflows.journey import JourneyWorkflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevServer:
    """A persisted dev server that can be SIGKILLed and started again on the same port and file."""

    def __init__(self, db_file: Path) -> None:
        self.db_file = db_file
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = dev_server_args(self.db_file, self.port, None)
        args += ["--http-port", str(_free_port()), "--metrics-port", str(_free_port())]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await wait_until_serving(self.address, timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DevServer]:
    srv = DevServer(tmp_path / "temporal.db")
    await srv.start()
    yield srv
    srv.kill()


async def test_server_killed_mid_wait_resumes_and_sends_later_steps_once(
    server: DevServer, settings: Settings, store: Store
) -> None:
    """SIGKILL the Temporal server while a journey waits a day: after restart steps 2 and 3 go out once each."""
    client = await Client.connect(server.address, data_converter=pydantic_data_converter)
    skipper = TimeSkipper(client)
    s2 = settings.model_copy(update={"task_queue": "rejoin-restart-" + secrets.token_hex(4)})
    app = create_app(s2, store=store, temporal=client)
    async with build_worker(client, s2, store) as worker, worker:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test", timeout=60) as api:
            sec = await make_section(api)
            await add_integration(api, sec)
            steps = [step("First"), step("Second", "P1D"), step("Third", "P1D")]
            cid = await create_campaign(api, sec, cart_campaign(wait="PT1H", steps=steps))
            dyid, uid = await reachable_user(api, sec)
            await collect(api, sec, dyid, add_to_cart("sku-1"))  # started without time skipping
            handle = client.get_workflow_handle_for(JourneyWorkflow.run, journey_workflow_id(sec.id, cid, uid))
            await skipper.fast_forward(handle, timedelta(hours=2))  # step 1 sent, now waiting a day
            assert [m["payload"]["step"] for m in await outbox(api, sec)] == ["First"]
            view = await handle.query(JourneyWorkflow.current_state)
            assert view.status == "waiting" and view.step_index == 1, view

            server.kill()
            await asyncio.sleep(1.0)
            await server.start()

            await skipper.fast_forward(handle)  # unbounded: to the end of the journey
            result = await asyncio.wait_for(handle.result(), 60)
            assert result.status == "completed", result
            assert [d.step_index for d in result.decisions if d.outcome == "sent"] == [0, 1, 2]
            messages = await outbox(api, sec)
            assert [m["payload"]["step"] for m in messages] == ["First", "Second", "Third"]
            assert len({m["send_key"] for m in messages}) == 3
