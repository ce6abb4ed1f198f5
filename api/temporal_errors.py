"""Temporal's own errors as API answers: one rule for every route that calls Temporal.

Temporal unreachable is `AppState.client`'s 503 (an `Unavailable` with the same `Retry-After`), given
within runtime/temporal.py's API_CONNECT_TIMEOUT. Once connected, Temporal can still refuse a call (an
`RPCError`), and that escaped as a 500. Now:

- a transient state of the server (`TRANSIENT`: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
  ABORTED) is a 503 with `Retry-After`: the same request succeeds once Temporal recovers;
- no answer: the calls inside `calling_temporal` that take over CALL_TIMEOUT_SECONDS together (a
  server that accepts connections but hangs), or one the SDK gave up on after its own 30 s
  (CANCELLED, "Timeout expired"), are a 503 with `Retry-After` too; before, such a request waited
  those 30 s per call and then answered 502 as if Temporal had refused;
- any other error (INTERNAL, a namespace not found, PERMISSION_DENIED...) is a 502: Temporal
  answered, and what it said is the operator's to fix; the details go to the log.

The answer names Temporal, the status and what could not be done, never the server's message (it
can carry hosts, shard numbers, namespace names). Routes wrap their Temporal calls in
`calling_temporal` to name the operation; `api/errors.py` renders `TemporalFailed`, and any
`RPCError` a route did not wrap the same way, naming the route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger(__name__)

TRANSIENT = frozenset({
    RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
})  # fmt: skip
# Also `AppState.client`'s when Temporal is unreachable. The API's client has already retried for
# about a second (runtime/temporal.py, REQUEST_RETRY): Temporal is busy or restarting.
RETRY_AFTER_SECONDS = 5
# The longest a route waits on the Temporal calls it makes in one `calling_temporal`: a healthy
# Temporal answers each in milliseconds, a busy one within REQUEST_RETRY's second of retries.
CALL_TIMEOUT_SECONDS = 10.0


class TemporalFailed(Exception):
    """A Temporal call refused: `status_code` 503 (transient, `retry_after` set) or 502."""

    def __init__(self, message: str, status_code: int, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after


def temporal_failure(err: RPCError, operation: str, then: str | None = None) -> TemporalFailed:
    """The answer for `err`, raised while the API tried to `operation` ("start the run");
    `then`: what the caller should know or do besides ("the feed was saved")."""
    name = err.status.name
    after = f"; {then}" if then else ""
    if err.status == RPCStatusCode.CANCELLED:  # the SDK's own call timeout: Temporal never answered
        log.warning("Temporal did not answer: could not %s: %s", operation, err.message)
        return no_answer(operation, then)
    if err.status in TRANSIENT:
        log.warning("Temporal %s: could not %s: %s", name, operation, err.message)
        message = f"Temporal is unavailable ({name}): could not {operation}{after}; retry later"
        return TemporalFailed(message, 503, RETRY_AFTER_SECONDS)
    log.error("Temporal refused to %s: %s: %s", operation, name, err.message)
    return TemporalFailed(f"Temporal refused to {operation} ({name}){after}; the details are in the API's log", 502)


def no_answer(operation: str, then: str | None = None) -> TemporalFailed:
    """The 503 for Temporal not answering while the API tried to `operation`."""
    after = f"; {then}" if then else ""
    message = f"Temporal did not answer in time: could not {operation}{after}; retry later"
    return TemporalFailed(message, 503, RETRY_AFTER_SECONDS)


@asynccontextmanager
async def calling_temporal(operation: str, then: str | None = None) -> AsyncIterator[None]:
    """Turn an `RPCError` of the calls inside into `TemporalFailed` (see `temporal_failure`), and
    calls taking over CALL_TIMEOUT_SECONDS into its 503 (`no_answer`)."""
    bound = asyncio.timeout(CALL_TIMEOUT_SECONDS)
    try:
        async with bound:
            yield
    except TimeoutError as err:
        if not bound.expired():
            raise  # a timeout of the block's own, not the wait on Temporal
        log.warning("Temporal did not answer within %g s: could not %s", CALL_TIMEOUT_SECONDS, operation)
        raise no_answer(operation, then) from err
    except RPCError as err:
        raise temporal_failure(err, operation, then) from err


def missing(err: RPCError) -> bool:
    """Whether Temporal answered that the workflow or schedule asked for does not exist.

    NOT_FOUND alone does not tell: a namespace that does not exist (a misconfigured
    REJOIN_TEMPORAL_NAMESPACE, a namespace deleted) answers NOT_FOUND to every call, and taken as
    "no such journey" it made exits report journeys as ended and stops end running journeys' rows."""
    if err.status != RPCStatusCode.NOT_FOUND:
        return False
    try:
        details = err.grpc_status.details
    except Exception:  # unparseable details: the status is all there is
        return True
    return not any(d.type_url.endswith(_NAMESPACE_NOT_FOUND) for d in details)


_NAMESPACE_NOT_FOUND = "temporal.api.errordetails.v1.NamespaceNotFoundFailure"


def safe_reason(err: BaseException) -> str:
    """An error as a caller may read it: an `RPCError` by its status only (its message is Temporal's
    server's), any other by its message."""
    return f"Temporal {err.status.name}" if isinstance(err, RPCError) else str(err)
