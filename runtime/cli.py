"""`rejoin` command: `dev` (everything embedded), `api`, `worker`, `create-section`.

`rejoin dev` starts the Temporal dev server with its Web UI (SQLite file under ./data), the
worker and the API; Ctrl-C stops everything it started: the API and the worker (draining its
activities), then the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit

import uvicorn
from pydantic import ValidationError

from security.redact import configure_logging
from settings import Settings

log = logging.getLogger("rejoin")


# How long the API keeps an idle keep-alive connection open. Longer than the idle timeout of the
# connection pools and load balancers in front of it (httpx 5 s, aiohttp 15 s, AWS ALB 60 s): with
# uvicorn's default of 5 s, the server closed connections a backend's pool was just reusing, and a
# load trial's backend saw "connection reset by peer" on requests never received (4 in 37,865).
KEEP_ALIVE_SECONDS = 75


async def _serve_api(settings: Settings, stop: asyncio.Event) -> None:
    from api.main import create_app

    config = uvicorn.Config(
        create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info", lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )  # fmt: skip
    server = uvicorn.Server(config)
    # We own SIGINT/SIGTERM (they stop the worker and dev server too): uvicorn must not take them.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task


def _taken_port(settings: Settings) -> str | None:
    """Why `rejoin dev` cannot start: one of its ports is held (else None).

    Checked before starting anything: the dev server would only log "address already in use",
    and the worker and API would attach to whatever holds the port (often an orphaned server of
    an earlier run), so the journeys would run somewhere else.
    """
    from runtime.dev_server import port_in_use

    temporal = urlsplit(f"//{settings.temporal_address}")
    ui = urlsplit(settings.temporal_ui_url)
    wanted = [  # (port, host clients use, what it serves, the setting that moves it)
        (temporal.port or 7233, temporal.hostname or "localhost", "Temporal server",
         "TEMPORAL_ADDRESS=localhost:<port>"),
        (ui.port or 8233, ui.hostname or "localhost", "Temporal Web UI",
         "REJOIN_TEMPORAL_UI_URL=http://localhost:<port>"),
        (settings.api_port, settings.api_host, "API", "REJOIN_API_PORT=<port>"),
    ]
    for port, host, what, setting in wanted:
        if port_in_use(port, ("127.0.0.1", host)):
            return (
                f"port {port} (the {what}) is in use: another program holds it, often a `rejoin dev` or "
                f"`temporal server` still running; find it with `ss -ltnp 'sport = :{port}'` (or `lsof -i :{port}`), "
                f"stop it, or set {setting}"
            )
    return None


def _refuse_taken_ports(settings: Settings) -> None:
    """Exit (before anything is created) if `rejoin dev` cannot have its ports."""
    taken = _taken_port(settings)
    if taken is not None:
        sys.exit(f"rejoin dev: {taken}")


async def _watch_server(proc: subprocess.Popen[bytes], stop: asyncio.Event, failed: list[str]) -> None:
    """Stop everything if the dev server dies: the worker would otherwise retry a dead address forever."""
    while not stop.is_set():
        if proc.poll() is not None:
            failed.append(f"the Temporal dev server exited (exit code {proc.returncode}): stopping")
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _dev(settings: Settings) -> None:
    from runtime.dev_server import start_dev_server, wait_until_serving
    from worker import run_worker_until

    parts = urlsplit(f"//{settings.temporal_address}")
    ui_port = urlsplit(settings.temporal_ui_url).port or 8233
    db_file = settings.data_dir.resolve() / "temporal.db"
    proc = start_dev_server(db_file, port=parts.port or 7233, ui_port=ui_port, die_with_parent=True)
    stop = asyncio.Event()
    failed: list[str] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop_then_quit, stop, proc)
    try:
        # Ctrl-C during start-up does not reach the server (its own session): stop waiting for it.
        serving = asyncio.create_task(wait_until_serving(settings.temporal_address, proc=proc))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([serving, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            return
        try:
            serving.result()
        except RuntimeError as exc:
            sys.exit(f"rejoin dev: {exc}")
        print(_banner(settings), flush=True)
        watch = asyncio.create_task(_watch_server(proc, stop, failed))
        await asyncio.gather(run_worker_until(settings, stop), _serve_api(settings, stop))
        await watch
        if failed:
            sys.exit(f"rejoin dev: {failed[0]}")
    finally:  # after the worker drained: its last activity completions still reach the server
        proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=15)
        if proc.poll() is None:
            proc.kill()


def _stop_then_quit(stop: asyncio.Event, server: subprocess.Popen[bytes]) -> None:
    """The first Ctrl-C stops gracefully (the worker drains its running activities, the API its
    requests, then the server stops); a second one, for someone who will not wait for a slow vendor
    call, quits at once: the server is killed and activities in flight run again at the next start."""
    if not stop.is_set():
        print("\nrejoin dev: stopping once running work ends (Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
        stop.set()
        return
    print("rejoin dev: quitting at once", file=sys.stderr, flush=True)
    server.kill()
    with contextlib.suppress(Exception):
        server.wait(timeout=5)
    os._exit(130)


def _temporal(settings: Settings) -> None:
    """The Temporal dev server `rejoin dev` runs, alone, in the foreground (it replaces this process):
    the same database file (`<data dir>/temporal.db`), address, UI port, search attributes and time
    skipping. For running the API and workers as processes of their own, so that each can be
    stopped or killed alone (docs/operations.md)."""
    from runtime.dev_server import dev_server_args

    parts = urlsplit(f"//{settings.temporal_address}")
    ui_port = urlsplit(settings.temporal_ui_url).port or 8233
    args = dev_server_args(settings.data_dir.resolve() / "temporal.db", parts.port or 7233, ui_port)
    os.umask(0o077)  # its database and WAL files owner-only, as `rejoin dev` makes them
    os.execv(args[0], args)


def _banner(settings: Settings) -> str:
    return "\n".join(
        [
            "",
            "Rejoin is running (Ctrl-C stops everything):",
            f"  API + OpenAPI docs : {settings.effective_public_url}/docs",
            f"  Temporal Web UI    : {settings.temporal_ui_url}",
            f"  database           : {settings.effective_database_url}",
            f"  admin key          : {settings.data_dir / 'admin.key'} (or REJOIN_ADMIN_KEY)",
            "",
        ]
    )


def _create_section(settings: Settings, name: str) -> None:
    from pydantic import ValidationError

    from api.routes.sections import SectionCreate, create_section
    from store.engine import Store

    try:
        body = SectionCreate(name=name)
    except ValidationError as exc:  # a usage error, as argparse reports its own: one line, exit 2
        print(f"rejoin create-section: name: {exc.errors()[0]['msg']}", file=sys.stderr)
        sys.exit(2)
    created = create_section(Store(settings.effective_database_url), body)
    print(json.dumps(created.model_dump(mode="json"), indent=2))


def _rebuild_reports(settings: Settings, campaign_ids: list[str]) -> None:
    """Recompute the report pre-aggregation of these campaigns (all: none given), after bringing the
    stored hits in line with the write path: hits a process of an older version recorded after the
    start-up migrations ran (in a rolling upgrade) have no per-send flags or implied opens."""
    from store.engine import Store
    from store.report_rollup import flag_stored_hits, imply_stored_opens, rebuild
    from store.tables import Campaign

    store = Store(settings.effective_database_url)
    with store.session() as s:
        unknown = [cid for cid in campaign_ids if s.get(Campaign, cid) is None]
        if unknown:
            sys.exit(f"no such campaign: {', '.join(unknown)}")
        flag_stored_hits(s)
        implied = imply_stored_opens(s)
    with store.session() as s:
        print(json.dumps({"campaigns_rebuilt": rebuild(s, campaign_ids or None), "opens_implied": implied}))


def _rotate_secrets(settings: Settings) -> None:
    from security.crypto import SecretBox
    from security.rotation import RotationIncomplete, rotate_all
    from store.engine import Store

    if not settings.secret_key and not (settings.data_dir / "secret.key").exists():
        sys.exit(f"rejoin rotate-secrets: no REJOIN_SECRET_KEY and no key file ({settings.data_dir / 'secret.key'}): "
                 "nothing to rotate")  # fmt: skip
    try:
        box = SecretBox(settings.secret_keys)
    except ValueError as exc:  # a malformed REJOIN_SECRET_KEY
        sys.exit(f"rejoin rotate-secrets: {exc}")
    try:
        counts = rotate_all(Store(settings.effective_database_url), box)
    except RotationIncomplete as exc:
        sys.exit(f"rejoin rotate-secrets: {exc}")
    print(json.dumps(counts))


def _purge_events(settings: Settings, days: float | None) -> None:
    from datetime import timedelta

    from store.engine import Store
    from store.retention import purge_events
    from store.tables import now_utc

    if days is not None and days <= 0:
        sys.exit("--days must be positive: it is how many days of events to keep")
    retention = timedelta(days=days) if days is not None else settings.event_retention
    if retention <= timedelta(0):  # REJOIN_EVENT_RETENTION=PT0S switches retention off (docs/security.md)
        print(json.dumps({"deleted_events": 0, "retention": "off"}))
        return
    deleted = purge_events(Store(settings.effective_database_url), now_utc() - retention)
    print(json.dumps({"deleted_events": deleted, "retention_days": retention.total_seconds() / 86400}))


def load_settings() -> Settings:
    """The settings from the environment; a wrong one exits with one line per setting, named as it
    is set (`REJOIN_BROADCAST_SHARDS: ...`), not a page of pydantic traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"{_setting_name(err['loc'])}: {err['msg']}" for err in exc.errors()]
        sys.exit("rejoin: invalid settings\n  " + "\n  ".join(lines))


def _setting_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    return f"REJOIN_{field.upper()}" if field in Settings.model_fields else field


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rejoin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run Temporal dev server + UI, worker and API together")
    sub.add_parser("temporal", help="run the Temporal dev server + UI of `rejoin dev` alone (for separate processes)")
    sub.add_parser("api", help="run the API only")
    sub.add_parser("worker", help="run a worker only")
    cs = sub.add_parser("create-section", help="create a section and print its keys")
    cs.add_argument("name")
    sub.add_parser("rotate-secrets", help="re-encrypt stored secrets under the newest REJOIN_SECRET_KEY")
    pe = sub.add_parser("purge-events", help="delete raw events older than the retention (REJOIN_EVENT_RETENTION)")
    pe.add_argument("--days", type=float, default=None, help="override the configured retention")
    sub.add_parser("reindex-carts", help="rebuild the cart index from users' carts (once, for data older than it)")
    rr = sub.add_parser("rebuild-reports", help="recompute the report pre-aggregation from the raw tables")
    rr.add_argument("campaign_id", nargs="*", help="default: every campaign")
    args = parser.parse_args(argv)
    configure_logging()  # PII masked and no request URLs (push tokens) at INFO, for every command
    settings = load_settings()
    if args.command == "dev":  # before the key files: a refused start leaves a fresh data folder untouched
        _refuse_taken_ports(settings)
    if args.command != "rotate-secrets":  # rotating under a key made up on the spot would be nonsense
        settings.secret_keys  # noqa: B018  (creates the key file on first run, before any process needs it)
    settings.effective_admin_key  # noqa: B018
    if args.command == "dev":
        asyncio.run(_dev(settings))
    elif args.command == "temporal":
        _temporal(settings)
    elif args.command == "api":
        uvicorn.run(
            "api.main:create_app", factory=True, host=settings.api_host, port=settings.api_port,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )  # fmt: skip
    elif args.command == "worker":
        from worker import main as worker_main

        worker_main()
    elif args.command == "create-section":
        _create_section(settings, args.name)
    elif args.command == "rotate-secrets":
        _rotate_secrets(settings)
    elif args.command == "purge-events":
        _purge_events(settings, args.days)
    elif args.command == "reindex-carts":
        from store import cart_index
        from store.engine import Store

        with Store(settings.effective_database_url).session() as s:
            print(json.dumps({"cart_entries": cart_index.rebuild(s)}))
    elif args.command == "rebuild-reports":
        _rebuild_reports(settings, args.campaign_id)
    else:  # pragma: no cover - argparse enforces the choices
        sys.exit(2)


if __name__ == "__main__":  # `python -m runtime.cli dev` as well as the `rejoin` script
    main()
