"""Start and stop what a benchmark needs: dev server, Rejoin worker and API, bare worker, sinks.

Everything runs on loopback on free ports, in a temporary folder, as child processes that are
stopped (by their own pid) when the stack closes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.fernet import Fernet
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench import scratch_db
from runtime.dev_server import dev_server_args, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "bench-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


ProcStats = dict[int, tuple[str, list[str]]]


def proc_stats() -> ProcStats:
    """pid -> (command name, the /proc stat fields after it) of every process now. The fields
    used here: ppid (1), utime (11), stime (12), cutime (13), cstime (14)."""
    stats: ProcStats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, rest = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            stats[int(entry.name)] = (head.split("(", 1)[-1], rest.split())
    return stats


def cpu_seconds(pid: int, snapshot: ProcStats | None = None) -> float:
    """User + system CPU time of a process and its children, live or reaped (0 once it has gone):
    uvicorn's `--workers` serve from child processes, which a count of the parent alone missed.
    `snapshot` (`proc_stats()`) lets one scan of /proc serve several processes."""
    stats = {p: fields for p, (_, fields) in (snapshot or proc_stats()).items()}
    if pid not in stats:
        return 0.0
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, fields in stats.items():
            if int(fields[1]) == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    ticks = sum(sum(int(x) for x in stats[p][11:15]) for p in tree)
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(snapshot: ProcStats | None = None) -> float:
    """CPU time of the local PostgreSQL server: its postmaster with every child it has reaped
    (backends of closed connections) plus the children alive now. 0 without a local server.

    The store's backends do part of every request's work on the same cores as the rest of the
    stack, so CPU per event counts them too."""
    stats = {p: fields for p, (name, fields) in (snapshot or proc_stats()).items() if name == "postgres"}
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for fields in stats.values():
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if int(fields[1]) not in stats:  # the postmaster (its parent is not a postgres process)
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped backends
    return total / tick


def _label(args: list[str]) -> str:
    text = " ".join(args)
    for needle, label in (("bench.bare", "bare worker"), ("bench.sink", "sink"), ("uvicorn", "api"),
                          ("-m worker", "worker"), ("server start-dev", "temporal server")):  # fmt: skip
        if needle in text:
            return label
    return Path(args[0]).name


class Stack:
    """The processes of one benchmark run."""

    def __init__(self, database_url: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rejoin-bench-"))
        self.temporal_port = free_port()
        self.api_port = free_port()
        self.queue = "rejoin-bench"
        self.bare_queue = "bare-bench"
        # PostgreSQL: a fresh database of this run's own on the server the URL names (created in
        # start, dropped in close), so no run measures against an earlier run's rows.
        self.scratch_db: str | None = None
        if database_url and scratch_db.is_postgres(database_url):
            self.scratch_db = scratch_db.unique_name("rejoin_bench")
            database_url = scratch_db.on_server(database_url, self.scratch_db)
        self.database_url = database_url or f"sqlite:///{self.dir / 'rejoin.db'}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.labels: dict[int, str] = {}
        self.worker: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None
        self._server_args: list[str] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TEMPORAL_ADDRESS": self.address,
            "REJOIN_DATA_DIR": str(self.dir),
            "REJOIN_DATABASE_URL": self.database_url,
            "REJOIN_TASK_QUEUE": self.queue,
            "REJOIN_ADMIN_KEY": ADMIN_KEY,
            "REJOIN_SECRET_KEY": Fernet.generate_key().decode(),
            "REJOIN_ALLOW_PRIVATE_URLS": "true",
            "REJOIN_RATE_LIMIT_PER_SECOND": "0",  # measure the engine, not the limiter
            "REJOIN_GLOBAL_CAP_MESSAGES": "1000",
        }

    async def settle(self, timeout: float = 60.0) -> None:
        """Wait until the stack is idle (every process under 10% of a core over half a second).

        The phase that follows (a baseline, say) must not share the machine with work left over
        from the previous one: a worker still starting journeys would slow the baseline and
        flatter the ratio.
        """
        deadline = time.monotonic() + timeout
        before = self.cpu()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = self.cpu()
            busy = [k for k in now if k != "load generator" and now[k] - before.get(k, 0.0) > 0.05]
            if not busy:
                return
            before = now

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far per component (this process = the load generator)."""
        out: dict[str, float] = {"load generator": sum(os.times()[:2])}
        snapshot = proc_stats()  # one scan of /proc for every component (settle polls this)
        if self.database_url and scratch_db.is_postgres(self.database_url):
            out["postgresql"] = postgres_cpu_seconds(snapshot)
        for proc in self.procs:
            label = self.labels[proc.pid]
            out[label] = out.get(label, 0.0) + cpu_seconds(proc.pid, snapshot)
        return out

    @property
    def server_pid(self) -> int | None:
        """The Temporal dev server's pid, once started."""
        return next((pid for pid, label in self.labels.items() if label == "temporal server"), None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, args: list[str], ready_line: bool = False) -> subprocess.Popen[bytes]:
        label = _label(args)
        # stderr to a file of its own, so a process that fails to start can say why (see _failed).
        with self._log_path(label).open("ab") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stderr=log,
                                    stdout=subprocess.PIPE if ready_line else subprocess.DEVNULL)  # fmt: skip
        self.procs.append(proc)
        self.labels[proc.pid] = label
        if ready_line:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if b"READY" not in line:
                raise self._failed(label, f"{args} did not start")
        return proc

    def _log_path(self, label: str) -> Path:
        return self.dir / f"{label.replace(' ', '-')}.log"

    def _failed(self, label: str, message: str) -> RuntimeError:
        """An error carrying the end of the process's stderr (the temp folder goes with close())."""
        path = self._log_path(label)
        tail = path.read_text(errors="replace")[-3000:] if path.exists() else ""
        return RuntimeError(f"{message}\n--- {label} stderr (last lines) ---\n{tail}")

    async def start(self) -> None:
        if self.scratch_db:
            scratch_db.create(self.database_url, self.scratch_db)
        args = dev_server_args(self.dir / "temporal.db", self.temporal_port, None)
        args += ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
        self._server_args = args
        self._spawn(args)
        await wait_until_serving(self.address, timeout=60)
        self.client = await Client.connect(self.address, data_converter=pydantic_data_converter)

    async def restart_server(self) -> None:
        """Start the dev server again on the same port and database file (after it was killed);
        clients, the worker and the API reconnect by themselves."""
        self._spawn(self._server_args)
        await wait_until_serving(self.address, timeout=60)

    async def start_worker(self) -> subprocess.Popen[bytes]:
        self.worker = self._spawn([sys.executable, "-m", "worker"])
        try:
            await self.wait_for_poller(self.queue)
        except RuntimeError as err:
            raise self._failed("worker", str(err)) from None
        return self.worker

    async def start_bare_worker(self) -> None:
        self._spawn([sys.executable, "-m", "bench.bare", self.address, self.bare_queue], ready_line=True)
        await self.wait_for_poller(self.bare_queue)

    async def start_api(self) -> None:
        self._spawn([sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--host", "127.0.0.1",
                     "--port", str(self.api_port), "--log-level", "warning", "--no-access-log",
                     "--timeout-keep-alive", "300", *os.environ.get("BENCH_UVICORN_ARGS", "").split()])  # fmt: skip
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as c:
            while time.monotonic() < deadline:
                try:
                    if (await c.get(self.api_url + "/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise self._failed("api", "API did not start")

    def start_sink(self, delay_ms: float) -> str:
        port = free_port()
        self._spawn([sys.executable, "-m", "bench.sink", str(port), str(delay_ms)], ready_line=True)
        return f"http://127.0.0.1:{port}"

    async def wait_for_poller(self, queue: str, timeout: float = 60) -> None:
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = await self.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace="default",
                    task_queue=TaskQueue(name=queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                )  # fmt: skip
            )
            if resp.pollers:
                return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"no worker polling {queue}")

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        if self.scratch_db:
            scratch_db.drop(self.database_url, self.scratch_db)
        shutil.rmtree(self.dir, ignore_errors=True)
