"""`rejoin` command: `dev` (everything embedded), `api`, `worker`, `create-section`.

`rejoin dev` starts the Temporal dev server with its Web UI (SQLite file under ./data), the
worker and the API in one process group; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from urllib.parse import urlsplit

import uvicorn

from security.redact import configure_logging
from settings import Settings

log = logging.getLogger("rejoin")


async def _serve_api(settings: Settings, stop: asyncio.Event) -> None:
    from api.main import create_app

    config = uvicorn.Config(
        create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info", lifespan="on"
    )
    server = uvicorn.Server(config)
    # We own SIGINT/SIGTERM (they stop the worker and dev server too): uvicorn must not take them.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task


async def _dev(settings: Settings) -> None:
    from runtime.dev_server import start_dev_server, wait_until_serving
    from worker import run_worker_until

    parts = urlsplit(f"//{settings.temporal_address}")
    ui_port = urlsplit(settings.temporal_ui_url).port or 8233
    proc = start_dev_server(settings.data_dir.resolve() / "temporal.db", port=parts.port or 7233, ui_port=ui_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await wait_until_serving(settings.temporal_address)
        print(_banner(settings), flush=True)
        await asyncio.gather(run_worker_until(settings, stop), _serve_api(settings, stop))
    finally:
        proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=15)
        if proc.poll() is None:
            proc.kill()


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
    from api.routes.sections import SectionCreate, create_section
    from store.engine import Store

    created = create_section(Store(settings.effective_database_url), SectionCreate(name=name))
    print(json.dumps(created.model_dump(mode="json"), indent=2))


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rejoin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run Temporal dev server + UI, worker and API together")
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
    settings = Settings()
    settings.secret_keys  # noqa: B018  (creates the key file on first run, before any process needs it)
    settings.effective_admin_key  # noqa: B018
    if args.command == "dev":
        asyncio.run(_dev(settings))
    elif args.command == "api":
        uvicorn.run("api.main:create_app", factory=True, host=settings.api_host, port=settings.api_port)
    elif args.command == "worker":
        from worker import main as worker_main

        worker_main()
    elif args.command == "create-section":
        _create_section(settings, args.name)
    elif args.command == "rotate-secrets":
        from security.crypto import SecretBox
        from security.rotation import rotate_all
        from store.engine import Store

        print(json.dumps(rotate_all(Store(settings.effective_database_url), SecretBox(settings.secret_keys))))
    elif args.command == "purge-events":
        _purge_events(settings, args.days)
    elif args.command == "reindex-carts":
        from store import cart_index
        from store.engine import Store

        with Store(settings.effective_database_url).session() as s:
            print(json.dumps({"cart_entries": cart_index.rebuild(s)}))
    elif args.command == "rebuild-reports":
        from store.engine import Store
        from store.report_rollup import rebuild

        from store.tables import Campaign

        with Store(settings.effective_database_url).session() as s:
            unknown = [cid for cid in args.campaign_id if s.get(Campaign, cid) is None]
            if unknown:
                sys.exit(f"no such campaign: {', '.join(unknown)}")
            print(json.dumps({"campaigns_rebuilt": rebuild(s, args.campaign_id or None)}))
    else:  # pragma: no cover - argparse enforces the choices
        sys.exit(2)
