"""FastAPI dependencies: the app's shared objects and the caller's identity."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request
from temporalio.client import Client

from api import auth
from api.dispatch_marks import DispatchMarks
from api.errors import Unavailable
from api.limits import TokenBuckets
from runtime.temporal import connect_temporal
from security.crypto import SecretBox
from settings import Settings
from store.engine import Store


@dataclass
class AppState:
    settings: Settings
    store: Store
    temporal: Client | None = None
    # Built once: every route that encrypts or decrypts shares it (ingestion is a hot path).
    box: SecretBox = field(init=False)
    # Per client address: how fast tracking hits are recorded (see Settings.tracking_hits_*).
    tracking_hits: TokenBuckets = field(init=False)
    # Successful dispatches are marked in batches (see api/dispatch_marks.py).
    dispatch_marks: DispatchMarks = field(init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.box = SecretBox(self.settings.secret_keys)
        self.dispatch_marks = DispatchMarks(self.store)
        self.tracking_hits = TokenBuckets(
            max(self.settings.tracking_hits_per_second, 1e-9), self.settings.tracking_hits_burst
        )

    async def client(self) -> Client:
        if self.temporal is None:
            async with self._lock:
                if self.temporal is None:
                    try:
                        self.temporal = await connect_temporal(self.settings)
                    except Exception as exc:  # connection refused, DNS, TLS: all mean "not now"
                        raise Unavailable(f"Temporal is not reachable at {self.settings.temporal_address}") from exc
        return self.temporal


async def app_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a hop on every request.
    state: AppState = request.app.state.rejoin
    return state


StateDep = Annotated[AppState, Depends(app_state)]


def _bearer(authorization: str | None, x_rejoin_key: str | None) -> str | None:
    if x_rejoin_key:
        return x_rejoin_key
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


async def _verify(state: AppState, presented: str | None, want: str) -> auth.Principal:
    # A recently verified key is answered on the event loop: no database, no thread hop (this
    # runs for every ingestion request); otherwise the lookup runs in a worker thread.
    principal = auth.verify_cached(presented, want=want)
    if principal is not None:
        return principal

    def lookup() -> auth.Principal:
        with state.store.session() as s:
            return auth.verify(s, presented, want=want)

    return await asyncio.to_thread(lookup)


async def management(
    state: StateDep,
    authorization: Annotated[str | None, Header()] = None,
    x_rejoin_key: Annotated[str | None, Header()] = None,
) -> auth.Principal:
    return await _verify(state, _bearer(authorization, x_rejoin_key), "management")


async def ingestion(state: StateDep, dy_api_key: Annotated[str | None, Header()] = None) -> auth.Principal:
    return await _verify(state, dy_api_key, "ingestion")


def admin(
    state: StateDep,
    authorization: Annotated[str | None, Header()] = None,
    x_rejoin_key: Annotated[str | None, Header()] = None,
) -> None:
    auth.verify_admin(_bearer(authorization, x_rejoin_key), state.settings.effective_admin_key)


Management = Annotated[auth.Principal, Depends(management)]
Ingestion = Annotated[auth.Principal, Depends(ingestion)]
Admin = Annotated[None, Depends(admin)]
