"""FastAPI dependencies: the app's shared objects and the caller's identity."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request
from temporalio.client import Client

from api import auth
from api.dispatch_marks import DispatchMarks
from api.errors import Unauthorized, Unavailable
from api.limits import TokenBuckets
from api.temporal_errors import RETRY_AFTER_SECONDS
from runtime.temporal import API_CONNECT_TIMEOUT, REQUEST_RETRY, TemporalUnreachable, connect_temporal
from security.crypto import SecretBox
from settings import Settings
from store.engine import Store

log = logging.getLogger(__name__)


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
    # The connection attempt under way (`client`), shared by the requests waiting on it.
    _connecting: asyncio.Task[Client] | None = field(default=None, init=False)
    _unreachable: bool = field(default=False, init=False)  # the last attempt failed (logged once)

    def __post_init__(self) -> None:
        self.box = SecretBox(self.settings.secret_keys)
        self.dispatch_marks = DispatchMarks(self.store)
        self.tracking_hits = TokenBuckets(
            max(self.settings.tracking_hits_per_second, 1e-9), self.settings.tracking_hits_burst
        )

    async def client(self) -> Client:
        """The API's Temporal client, connected on first use; while Temporal is unreachable, a 503
        within API_CONNECT_TIMEOUT. The requests waiting at once share one attempt: before, each
        waited its own turn behind the others (a lock), the last for minutes."""
        if self.temporal is not None:
            return self.temporal
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect())
            # Read the outcome even if every waiter has gone (no "exception was never retrieved").
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            # Shielded: a request its caller gave up on does not cancel the attempt the others wait on.
            return await asyncio.shield(self._connecting)
        except Exception as exc:  # refused, DNS, TLS, no answer: all mean "not now"
            reason = exc.reason if isinstance(exc, TemporalUnreachable) else "connection failed"
            # The same Retry-After as a busy Temporal's 503 (api/temporal_errors.py).
            message = f"Temporal is not reachable at {self.settings.temporal_address} ({reason}); retry later"
            raise Unavailable(message, retry_after=RETRY_AFTER_SECONDS) from exc

    async def _connect(self) -> Client:
        address = self.settings.temporal_address
        try:
            client = await connect_temporal(self.settings, retry_config=REQUEST_RETRY, timeout=API_CONNECT_TIMEOUT)
        except Exception as exc:
            if not self._unreachable:  # once per outage: every request that needs Temporal tries again
                log.warning("Temporal is not reachable at %s (%s): requests that need it answer 503 until it is;"
                            " each such request tries to connect again", address, exc)  # fmt: skip
            self._unreachable = True
            raise
        log.info("connected to Temporal at %s%s", address, " (reachable again)" if self._unreachable else "")
        self._unreachable = False
        self.temporal = client
        return client


async def app_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a hop on every request.
    state: AppState = request.app.state.rejoin
    return state


StateDep = Annotated[AppState, Depends(app_state)]


def _presented_keys(authorization: str | None, x_rejoin_key: str | None) -> list[str]:
    """Every key the request carries (`Authorization: Bearer …` and `X-Rejoin-Key`, in that order).

    Both are checked (`_one_principal`): a request must not authenticate on one header while the
    other holds a bad key. An `Authorization` of another scheme (Basic from a gateway in front of
    the API) is not Rejoin's: beside `X-Rejoin-Key` it is left to that gateway; alone it is a 401."""
    keys: list[str] = []
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            if not token.strip():
                raise Unauthorized("the Authorization header holds no key after 'Bearer'")
            keys.append(token.strip())
        elif not x_rejoin_key:
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    if x_rejoin_key:
        keys.append(x_rejoin_key)
    return keys


async def _one_principal(checks: list[Awaitable[auth.Principal | None]]) -> auth.Principal | None:
    """Run every credential check; a request whose credentials disagree does not authenticate.

    Any missing, invalid or revoked key is 401 (even when another header holds a valid key);
    otherwise a key of the wrong kind is 403; two different valid keys are 401 (ambiguous)."""
    results = await asyncio.gather(*checks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if isinstance(error, Unauthorized):
            raise error
    if errors:
        raise errors[0]
    principals = [r for r in results if isinstance(r, auth.Principal)]
    if len({p.key_id for p in principals}) > 1:
        raise Unauthorized("Authorization and X-Rejoin-Key carry different keys; send one key")
    return principals[0] if principals else None


async def _verify(state: AppState, presented: str | None, want: str) -> auth.Principal:
    # A recently verified key is answered on the event loop: no database, no thread hop (this
    # runs for every ingestion request); otherwise the lookup runs in a worker thread.
    principal = auth.verify_cached(presented, want=want)
    if principal is not None:
        return principal
    assert presented is not None  # verify_cached refused a missing key
    auth.refuse_admin_key(presented, state.settings.effective_admin_key, want)

    def lookup() -> auth.Principal:
        with state.store.session() as s:
            return auth.verify(s, presented, want=want)

    return await asyncio.to_thread(lookup)


async def _verify_admin(state: AppState, presented: str) -> None:
    try:
        auth.verify_admin(presented, state.settings.effective_admin_key)
    except Unauthorized:
        await asyncio.to_thread(_refuse_section_key, state, presented)
        raise


def _refuse_section_key(state: AppState, presented: str) -> None:
    with state.store.session() as s:
        auth.refuse_section_key(s, presented)


async def management(
    state: StateDep,
    authorization: Annotated[str | None, Header()] = None,
    x_rejoin_key: Annotated[str | None, Header()] = None,
    dy_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> auth.Principal:
    keys = _presented_keys(authorization, x_rejoin_key)
    if not keys:
        # A key in the ingestion routes' header is the usual mistake: say where this one goes.
        hint = " (dy-api-key is read by the ingestion routes only: /v2/collect and /v2/userdata)" if dy_api_key else ""
        raise Unauthorized(f"missing API key: send it as 'Authorization: Bearer <key>' or X-Rejoin-Key{hint}")
    principal = await _one_principal([_verify(state, key, "management") for key in keys])
    assert principal is not None  # one check per key, each a principal or an error
    return principal


async def ingestion(
    state: StateDep,
    dy_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_rejoin_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> auth.Principal:
    if not dy_api_key and (authorization or x_rejoin_key):
        # The Experience API's header: a key sent the management routes' way is the usual mistake.
        raise Unauthorized("missing API key: ingestion routes read it from the dy-api-key header")
    return await _verify(state, dy_api_key, "ingestion")


async def admin(
    state: StateDep,
    authorization: Annotated[str | None, Header()] = None,
    x_rejoin_key: Annotated[str | None, Header()] = None,
) -> None:
    keys = _presented_keys(authorization, x_rejoin_key)
    if not keys:
        raise Unauthorized("missing admin key")
    await _one_principal([_verify_admin(state, key) for key in keys])


Management = Annotated[auth.Principal, Depends(management)]
Ingestion = Annotated[auth.Principal, Depends(ingestion)]
Admin = Annotated[None, Depends(admin)]
