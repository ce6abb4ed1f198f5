"""The FastAPI application: ingestion (`/v2/...`, Experience API shapes) and management (`/api/v1`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from temporalio.client import Client

from api import auth
from api.deps import AppState
from api.error_responses import document_error_responses
from api.errors import Unavailable, install_error_handlers
from api.ingestion import redispatch_pending
from api.limits import RequestLimits
from api.nul_guard import NulGuard
from api.routes import (
    campaigns,
    catalog,
    collect,
    erasure,
    feeds,
    integrations,
    journey_stops,
    journeys,
    reports,
    secrets_admin,
    sections,
    serve,
    subscribers,
    templates,
    tracking,
    tracking_legacy,
    userdata,
)
from api.temporal_errors import RETRY_AFTER_SECONDS
from security.redact import install_log_redaction
from settings import Settings
from store.engine import Store
from store.migrations import mark_erased_users, run_once
from store.reachability import rekey_web_push
from store.retention import retention_loop

log = logging.getLogger(__name__)
SWEEP_SECONDS = 5.0


async def _sweep(state: AppState) -> None:
    """Replay journey commands whose dispatch failed (Temporal was briefly unreachable)."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            await redispatch_pending(state)
        except Exception as exc:  # keep sweeping; the next round retries
            log.warning("re-dispatch round failed: %s", exc)


async def _connect_at_start(state: AppState) -> None:
    """Connect to Temporal in the background from the start, retrying until it answers.

    The API starts without Temporal (ingestion stores events and the sweeper dispatches them later),
    so an unreachable Temporal does not stop its start: the log says so within API_CONNECT_TIMEOUT
    (`AppState.client`, once per outage) and says when it is connected."""
    while True:
        try:
            await state.client()
            return
        except Unavailable:
            await asyncio.sleep(RETRY_AFTER_SECONDS)


def _migrate_data(state: AppState) -> None:
    """Data migrations (`store/migrations.py`): those needing the secret box, and the marking of old
    tombstones; the worker writes none of the data they move, so the API's start is enough."""
    with state.store.session() as s:
        # Web Push opt-ins stored under their raw JSON's hash move to their endpoint's hash.
        run_once(s, "rekey_web_push", lambda session: rekey_web_push(session, state.box.decrypt))
        # Tombstones of erasures made before `User.erased_at`: no batched run lists them any more.
        run_once(s, "mark_erased_users", mark_erased_users)


def create_app(settings: Settings | None = None, *, store: Store | None = None, temporal: Client | None = None) -> FastAPI:
    settings = settings or Settings()
    state = AppState(settings=settings, store=store or Store(settings.effective_database_url), temporal=temporal)
    _migrate_data(state)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_sweep(state)), asyncio.create_task(auth.watch_revocations(state.store))]
        tasks.append(asyncio.create_task(_connect_at_start(state)))
        if state.settings.event_retention.total_seconds() > 0:
            tasks.append(asyncio.create_task(retention_loop(state.store, state.settings.event_retention)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.dispatch_marks.close()

    app = FastAPI(
        title="Rejoin",
        version="0.1.0",
        description="Event-triggered, multi-step customer journeys on Temporal.",
        lifespan=lifespan,
    )
    app.state.rejoin = state
    install_log_redaction()
    # Inside the request limits (added first: the last added runs first): NUL in a path or query refused.
    app.add_middleware(NulGuard)
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        max_json_depth=settings.max_json_depth,
        rate_per_second=settings.rate_limit_per_second,
        burst=settings.rate_limit_burst,
        admin_key=lambda: settings.effective_admin_key,
    )
    install_error_handlers(app)
    for module in (
        collect, userdata, sections, campaigns, integrations, catalog, journeys, journey_stops, secrets_admin,
        templates, tracking, tracking_legacy, reports, subscribers, feeds, erasure, serve,
    ):  # fmt: skip
        app.include_router(module.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    _document_validation_errors(app)
    return app


def _document_validation_errors(app: FastAPI) -> None:
    """The schema's ValidationError as the API sends it: `type`, `loc`, `msg` only (FastAPI lists
    `input` and `ctx` too, which `api/errors.py::validation_detail` never returns); and each
    operation's error answers (400, 401, 403, 404, 409, 413, 415, 429, 502, 503: `api/error_responses.py`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            error = schema.get("components", {}).get("schemas", {}).get("ValidationError", {})
            for extra in ("input", "ctx"):
                error.get("properties", {}).pop(extra, None)
            document_error_responses(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
