"""Benchmark (4): subscriber-list sync of a big file from S3 vs the raw PostgreSQL way.

Rejoin side: the activities `SubscriberSyncWorkflow` runs, in production order (`claim`,
`sync_folder`, `finish`), each through temporalio's `ActivityEnvironment` in a child process
of their own, so that process's peak RSS (`VmHWM`) is the sync's memory and nothing else's.
The file is read from a moto S3 server (own process) on loopback.
Baseline: psycopg COPY of the same file (from disk) into a fresh unindexed table, a unique
index, then a rename swap in one transaction.

    python -m bench --only subscribers --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python -m bench --only subscribers --scale 0.02     # 200k rows
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import psycopg

from bench import scratch_db
from bench.harness import ROOT, cpu_seconds, free_port

BUCKET = "rejoin-bench-subs"
FOLDER = "upload_2026-11-23_08-00"


def write_csv(path: Path, rows: int) -> int:
    """A realistic email list, written streaming (never held in memory); returns its size in bytes."""
    domains = ["example.com", "mail.example.org", "corp.example.net", "shop.example.io"]
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("email\n")
        block: list[str] = []
        for i in range(rows):
            block.append(f"first.last{i}@{domains[i % 4]}\n")
            if len(block) == 10_000:
                f.write("".join(block))
                block.clear()
        f.write("".join(block))
    return path.stat().st_size


def peak_rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _cpu(who: int = 0) -> float:
    """CPU seconds of this process (all threads; or of its finished children, the seal helpers)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN if who else resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class ChildPeaks:
    """Peak RSS (VmHWM) of this process's seal helper children, sampled every 0.2 s."""

    def __init__(self) -> None:
        import threading

        self.peaks: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for task in Path("/proc/self/task").iterdir():
                for pid in (task / "children").read_text().split():
                    try:
                        status = Path(f"/proc/{pid}/status").read_text()
                        if b"seal_pool" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue
                    except OSError:
                        continue
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            self.peaks[int(pid)] = max(self.peaks.get(int(pid), 0.0), int(line.split()[1]) / 1024)

    def close(self) -> dict[int, float]:
        self.stop.set()
        self.thread.join()
        return self.peaks


class MotoServer:
    """moto in server mode, as its own process (it holds uploaded objects in its memory, not ours)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.2)

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def baseline_pg(database_url: str, path: Path) -> dict[str, float]:
    """COPY the file into a fresh unindexed table, index it, swap it in by rename."""
    with psycopg.connect(scratch_db.libpq(database_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS optin_live (email text NOT NULL)")
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS optin_live_email ON optin_live (email)")
        conn.execute("DROP TABLE IF EXISTS optin_next")
        backend = conn.info.backend_pid
        cpu0 = cpu_seconds(backend)
        start = time.perf_counter()
        conn.execute("CREATE TABLE optin_next (email text NOT NULL)")
        with conn.cursor() as cur, cur.copy("COPY optin_next (email) FROM STDIN (FORMAT csv, HEADER true)") as copy:
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    copy.write(block)
        copied = time.perf_counter()
        conn.execute("CREATE UNIQUE INDEX optin_next_email ON optin_next (email)")
        indexed = time.perf_counter()
        with conn.transaction():
            conn.execute("DROP TABLE optin_live")
            conn.execute("ALTER TABLE optin_next RENAME TO optin_live")
            conn.execute("ALTER INDEX optin_next_email RENAME TO optin_live_email")
        end = time.perf_counter()
        cpu = cpu_seconds(backend) - cpu0  # the backend only: parallel index workers are not counted
    return {"seconds": end - start, "copy_s": copied - start, "index_s": indexed - copied, "swap_s": end - indexed,
            "pg_backend_cpu_s": cpu}  # fmt: skip


def run_child(database_url: str, s3_url: str, key_prefix: str, profile: bool = False) -> dict[str, Any]:
    """Run the sync in a fresh process (see `_child`); returns its JSON report."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "bench.subscribers", database_url, s3_url, key_prefix]
    if profile:
        args.append("--profile")
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"sync child failed: {out.stderr[-3000:]}")
    if profile:
        print(out.stderr[-6000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _child(database_url: str, s3_url: str, prefix: str, profile: bool) -> dict[str, Any]:
    """In the child: a section, an email integration and its provisioned list, then one sync."""
    import secrets as token
    from datetime import UTC, datetime

    from cryptography.fernet import Fernet
    from temporalio.testing import ActivityEnvironment

    from activities.subscribers import SubscriberActivities
    from security.crypto import SecretBox
    from settings import Settings
    from store.engine import Store
    from store.subscriber_tables import SubscriberList
    from store.tables import Integration, Section
    from workflows.subscriber_models import ClaimRequest, FinishSyncRequest, SyncFolderRequest

    settings = Settings(s3_endpoint_url=s3_url, s3_access_key_id="testing", s3_secret_access_key="testing",
                        database_url=database_url, data_dir=Path(tempfile.gettempdir()))  # fmt: skip
    store = Store(settings.effective_database_url)
    now = datetime.now(UTC)
    sid, iid = "sec_" + token.token_hex(6), "int_" + token.token_hex(6)
    with store.session() as s:
        s.add(Section(id=sid, name="bench", created_at=now))
    with store.session() as s:
        s.add(Integration(id=iid, section_id=sid, channel="email", name="bench", kind="outbox",
                          identifier_type="email", created_at=now, updated_at=now))  # fmt: skip
        s.add(SubscriberList(integration_id=iid, section_id=sid, channel="email", bucket=BUCKET, prefix=prefix,
                             iam_user="bench", created_at=now))  # fmt: skip
    acts = SubscriberActivities(store, settings, SecretBox([Fernet.generate_key().decode()]))
    env = ActivityEnvironment()
    index_s = _time_index_builds()
    backends0 = _backend_cpu(store)
    rss_before, _ = peak_rss_mb()
    cpu0, helpers_cpu0 = _cpu(), _cpu(1)
    children = ChildPeaks()
    start = time.perf_counter()
    claim = env.run(acts.claim, ClaimRequest(section_id=sid, integration_id=iid, folder=FOLDER, as_of=now))
    req = SyncFolderRequest(sync_id=claim.sync_id, integration_id=iid, folder=FOLDER, generation=claim.generation,
                            max_rejected_rows=100_000)  # fmt: skip
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        result = prof.runcall(env.run, acts.sync_folder, req)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    else:
        result = env.run(acts.sync_folder, req)
    staged = time.perf_counter()
    env.run(acts.finish, FinishSyncRequest(sync_id=claim.sync_id, result=result, as_of=datetime.now(UTC)))
    end = time.perf_counter()
    _, peak = peak_rss_mb()
    helpers = children.close()
    backends = _backend_cpu(store)
    store.dispose()
    pg_cpu = sum(cpu - backends0.get(pid, 0.0) for pid, cpu in backends.items())
    return {"seconds": end - start, "stage_s": staged - start, "finish_s": end - staged, "state": result.state,
            "accepted": result.rows_accepted, "rejected": result.rows_rejected, "rss_before_mb": rss_before,
            "peak_mb": peak, "cpu_s": _cpu() - cpu0, "helpers_cpu_s": _cpu(1) - helpers_cpu0, "helper_peaks_mb": sorted(helpers.values()),
            "peak_total_mb": peak + sum(helpers.values()), "index_s": sum(index_s),
            "pg_backend_cpu_s": pg_cpu}  # fmt: skip


def _backend_cpu(store: Any) -> dict[int, float]:
    """CPU seconds so far of the PostgreSQL backends serving this process's database (its pool's
    connections; parallel index workers are not counted, as for the baseline)."""
    if store.engine.dialect.name != "postgresql":
        return {}
    with store.engine.connect() as conn:
        pids = conn.exec_driver_sql("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").scalars()
        return {int(pid): cpu_seconds(int(pid)) for pid in pids}


def _time_index_builds() -> list[float]:
    """Wrap the set index build to time it (benchmark instrumentation only); durations land in the list."""
    from store import subscribers as lists

    spent: list[float] = []
    build = lists.index_set

    def timed(s: Any, name: str) -> None:
        t0 = time.perf_counter()
        build(s, name)
        spent.append(time.perf_counter() - t0)

    lists.index_set = timed
    return spent


def bench_subscribers(database_url: str | None, rows: int, sqlite_rows: int) -> list[dict[str, Any]]:
    """(4) rows/s of a whole-list sync from S3 vs COPY + index + swap; peak RSS of the syncing process."""
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rejoin-bench-subs-") as tmp:
        path = Path(tmp) / "data.csv"
        moto = MotoServer()
        try:
            s3 = moto.client()
            s3.create_bucket(Bucket=BUCKET)
            files = {}
            for n in sorted({rows, sqlite_rows}):
                size = write_csv(path, n)
                key = f"n{n}/"
                s3.upload_file(str(path), BUCKET, f"{key}{FOLDER}/data.csv")
                files[n] = (key, size)
            if database_url and scratch_db.is_postgres(database_url):
                with scratch_db.scratch_database(database_url, "rejoin_bench_subs") as own:
                    moto_cpu = cpu_seconds(moto.proc.pid)
                    ours = run_child(own, moto.url, files[rows][0])
                    ours["moto_cpu_s"] = cpu_seconds(moto.proc.pid) - moto_cpu
                    write_csv(path, rows)
                    base = baseline_pg(own, path)
                out.append(_row("subs_sync_pg", rows, ours, base, files[rows][1]))
            sqlite_url = f"sqlite:///{Path(tmp) / 'rejoin.db'}"
            ours = run_child(sqlite_url, moto.url, files[sqlite_rows][0])
            out.append(_row("subs_sync_sqlite", sqlite_rows, ours, None, files[sqlite_rows][1]))
        finally:
            moto.stop()
    return out


def _row(name: str, rows: int, ours: dict[str, Any], base: dict[str, float] | None, size: int) -> dict[str, Any]:
    rate = rows / ours["seconds"]
    # CPU per row of everything the sync ran on (the sync process, seal helpers, its PostgreSQL backends, moto)
    cpu = sum(ours.get(k, 0.0) for k in ("cpu_s", "helpers_cpu_s", "pg_backend_cpu_s", "moto_cpu_s"))
    ours["cpu_us_per_row"] = cpu / rows * 1e6
    row: dict[str, Any] = {"name": name, "unit": "rows/s", "rejoin": rate, "n": rows, "file_mb": size / 2**20,
                           "rejoin_s": ours["seconds"], "rejoin_detail": ours, "target": 0.5}  # fmt: skip
    if base is not None:
        base["cpu_us_per_row"] = base["pg_backend_cpu_s"] / rows * 1e6
        row.update(baseline=rows / base["seconds"], baseline_s=base["seconds"], baseline_detail=base,
                   ratio=base["seconds"] / ours["seconds"],
                   baseline_desc="psycopg COPY into a fresh unindexed table + unique index + rename swap")  # fmt: skip
    else:
        row.update(baseline=None, ratio=None, baseline_desc="SQLite: no raw baseline")
    return row


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2], sys.argv[3], "--profile" in sys.argv)))
