"""Domain errors and how the API renders them: one JSON shape, naming the field at fault."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError

from api.temporal_errors import TemporalFailed, temporal_failure
from domain.events import EventValidationError
from domain.field_error import FieldError
from security.crypto import UndecryptableSecret
from security.rotation import RotationIncomplete

log = logging.getLogger(__name__)
# What a client is told of an error no handler expected: nothing of it (its message may name a table,
# a query, a secret); the log has it, with its traceback.
INTERNAL_ERROR = "internal error"


class RejoinError(Exception):
    """A refusal; `field` names the input at fault, dotted. A 422's is located as `field_loc` says:
    a body field as is (`events.0.name`), a parameter with its source (`query.to`, `path.feed_id`).
    Any other status's is located by the request (`_located`): `journey_id` of a path is `path.journey_id`."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if status_code is not None:
            self.status_code = status_code


class NotFound(RejoinError):
    status_code = 404


class Conflict(RejoinError):
    status_code = 409


class Unprocessable(RejoinError):
    status_code = 422


class Unauthorized(RejoinError):
    status_code = 401


class Forbidden(RejoinError):
    status_code = 403


class Unavailable(RejoinError):
    status_code = 503

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, answered as `Retry-After` (as `TemporalFailed`'s)


class ErrorItem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ErrorResponse(BaseModel):
    """Every error answer's body (`error_body`); the OpenAPI schema declares it for the 4xx a route can give."""

    detail: list[ErrorItem]
    error: str


# A batch of 100 events can hold thousands of faults (a cart of bad lines in each): the first are
# enough to fix a sender, and a last item says how many more there are.
MAX_REPORTED_ERRORS = 50


def capped(detail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_REPORTED_ERRORS items, then one `too_many_errors` item counting the rest."""
    if len(detail) <= MAX_REPORTED_ERRORS:
        return detail
    more = len(detail) - MAX_REPORTED_ERRORS
    note = {"type": "too_many_errors", "loc": ["body"], "msg": f"{more} more errors not listed"}
    return [*detail[:MAX_REPORTED_ERRORS], note]


def errors_body(detail: list[dict[str, Any]]) -> dict[str, Any]:
    """The error shape for one or more faults (at least one): `detail` capped, `error` the first
    fault's place and message, counting the others."""
    if not detail:
        return {"detail": [], "error": "invalid request"}
    first = detail[0]
    loc = [str(part) for part in first["loc"]]
    place = ".".join(loc[1:] if len(loc) > 1 and loc[0] == "body" else loc)  # `events.0.name`, as route errors say
    more = f" (and {len(detail) - 1} more errors)" if len(detail) > 1 else ""
    return {"detail": capped(detail), "error": f"{place}: {first['msg']}{more}" if place else first["msg"] + more}


# Where a request's input comes from, as FastAPI starts the `loc` of its own validation errors.
SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


def field_loc(field: str) -> list[str | int]:
    """A dotted field (`events.0.name`, `query.to`, `path.feed_id`) as a 422's `loc`, the shape
    FastAPI gives its own: the source first (`body` unless the field names another), list indexes
    as numbers (`["body", "events", 0, "name"]`). A client reads every 422 the same way."""
    parts: list[str | int] = [int(part) if part.isdigit() else part for part in field.split(".")]
    return parts if parts[0] in SOURCES else ["body", *parts]


def error_body(message: str, field: str | None = None, kind: str = "rejoin_error") -> dict[str, Any]:
    """One fault, `field` (dotted) located as `field_loc` says. Same item shape as FastAPI's
    documented ValidationError (type, loc, msg), so every 422 the API returns matches its OpenAPI schema."""
    return errors_body([{"type": kind, "loc": field_loc(field) if field else [], "msg": message}])


def _located(request: Request, field: str) -> str | None:
    """A refusal's field (other than a 422's: a 404's or 409's `user_ref`) with its source, as
    `field_loc` reads it: a path or query parameter of the request with `path.` or `query.`, else a
    field of the route's body with `body.` (left implied); None for a field that is no input at all
    (a campaign's `status` on `activate`, a route without a body): it stays bare. Found here, once,
    from the request the route answered: the routes name their parameters as they always did."""
    first = field.split(".", 1)[0]
    if first in SOURCES:
        return field
    if first in request.path_params:
        return f"path.{field}"
    if first in request.query_params:
        return f"query.{field}"
    route = request.scope.get("route")
    return field if getattr(route, "body_field", None) is not None else None


def _unlocated_body(message: str, field: str) -> dict[str, Any]:
    """A refusal naming a field that is no input of the request (`_located`): `loc` the field's parts."""
    detail = {"type": "rejoin_error", "loc": field.split("."), "msg": message}
    return {"detail": [detail], "error": f"{field}: {message}"}


def validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's validation errors reduced to `type`, `loc` and `msg`.

    The default handler also returns each error's `input` (for a missing field, the whole body:
    an integration's password, a shopper's e-mail address) and `ctx` (which can quote the input,
    e.g. the text of a JSON decode error); neither leaves the API."""
    return [{"type": str(e["type"]), "loc": _loc(e), "msg": _msg(e)} for e in errors]


def _msg(error: Any) -> str:
    """The error's message without pydantic's "Value error, " before a validator's own words: the
    message is ours, written to be read as it is."""
    return str(error["msg"]).removeprefix("Value error, ")


def _loc(error: Any) -> list[Any]:
    """The error's `loc`, extended by the field a model validator named (`domain/field_error.py`)."""
    cause = (error.get("ctx") or {}).get("error")
    return [*error["loc"], *cause.loc()] if isinstance(cause, FieldError) else list(error["loc"])


_NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "list_type"}
EMPTY_BODY = "empty body: send a JSON object"


def unparsed_body(request: Request, exc: RequestValidationError) -> str | None:
    """Why the body could not be read as JSON at all (the Experience API's 400 "request parse
    error"), else None: the body was read, and its faults are 422s naming fields."""
    content_type = request.headers.get("content-type", "")
    for error in exc.errors():
        loc = tuple(error.get("loc") or ())
        if error.get("type") == "missing" and loc[:1] == ("body",) and exc.body is None and _sent_empty(request):
            # FastAPI reads an empty body as none at all: "Field required" at `body` said nothing useful.
            return EMPTY_BODY
        # FastAPI's own decode error: ("body", char position). A pydantic `Json` field's has a field name.
        if error.get("type") == "json_invalid" and len(loc) == 2 and loc[0] == "body" and isinstance(loc[1], int):
            reason = str((error.get("ctx") or {}).get("error") or "malformed")
            return "not valid JSON: " + _where(reason.removesuffix(" at"), exc.body, loc[1])
        if loc == ("body",) and error.get("type") in _NOT_AN_OBJECT and "json" not in content_type:
            # FastAPI reads JSON only under a JSON content type: any other body reaches the model as
            # raw bytes, and "Input should be a valid dictionary" does not say what went wrong.
            sent = f"as {content_type.split(';')[0]}" if content_type else "without a Content-Type"
            return f"the body was sent {sent}; send JSON with Content-Type: application/json"
    return None


def _sent_empty(request: Request) -> bool:
    """Whether the body was empty (as decoded: `api/limits.py` sets the length of a decompressed body),
    not a JSON `null`, which FastAPI reads the same."""
    return request.headers.get("content-length", "0").strip() == "0"


def _where(reason: str, doc: Any, pos: int) -> str:
    """`reason` with the line, column and character where the decoder stopped (never the text itself:
    the body may hold a password or a shopper's address)."""
    if not isinstance(doc, str):
        return f"{reason} at char {pos}"
    line = doc.count("\n", 0, pos) + 1
    column = pos - doc.rfind("\n", 0, pos)
    ends = ", where the body ends (truncated?)" if pos >= len(doc.rstrip()) else ""
    return f"{reason} at line {line}, column {column} (char {pos}){ends}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        unparsed = unparsed_body(request, exc)
        if unparsed is not None:
            return JSONResponse(error_body(unparsed, "body", kind="json_invalid"), status_code=400)
        return JSONResponse(errors_body(validation_detail(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The router's own answers (an unknown path 404, a wrong method 405) in the one error shape,
        # not Starlette's `{"detail": "Not Found"}`: a client parses every error the same way.
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        body = error_body(message, kind="not_found" if exc.status_code == 404 else "http_error")
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RejoinError)
    async def _rejoin(request: Request, exc: RejoinError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if isinstance(exc, Unavailable):
            headers = _retry_after(exc.retry_after)
        # A 422's field is located as the route names it; any other's by where the request carried it.
        located = exc.field if exc.field is None or exc.status_code == 422 else _located(request, exc.field)
        if exc.field is not None and located is None:
            body = _unlocated_body(exc.message, exc.field)
        else:
            body = error_body(exc.message, located)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(TemporalFailed)
    async def _temporal(_: Request, exc: TemporalFailed) -> JSONResponse:
        return _temporal_answer(exc)

    @app.exception_handler(RPCError)
    async def _rpc(request: Request, exc: RPCError) -> JSONResponse:
        # A Temporal call no route wrapped in `calling_temporal`: the same answer, naming the route.
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        return _temporal_answer(temporal_failure(exc, f"answer {request.method} {path}"))

    @app.exception_handler(UndecryptableSecret)
    async def _undecryptable(_: Request, exc: UndecryptableSecret) -> JSONResponse:
        # This process lacks a key the stored value needs (started before a rotation, or a key
        # dropped too early): the operator's to fix, and the request may succeed on another process.
        return JSONResponse(error_body(str(exc)), status_code=503)

    @app.exception_handler(RotationIncomplete)
    async def _rotation(_: Request, exc: RotationIncomplete) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=409)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Anything no handler above takes (a bug, a database error): a 500 in the one error shape,
        # not Starlette's plain-text "Internal Server Error". Starlette's outermost middleware calls
        # this for every route and middleware, then re-raises for the server (uvicorn logs it too).
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        log.error("%s %s failed: %s", request.method, path, type(exc).__name__, exc_info=exc)
        return JSONResponse(error_body(INTERNAL_ERROR, kind="internal_error"), status_code=500)

    @app.exception_handler(EventValidationError)
    async def _event(_: Request, exc: EventValidationError) -> JSONResponse:
        # Every invalid event with all its faults, `loc` as FastAPI gives its own: list indexes as numbers.
        detail = [{"type": "rejoin_error", "loc": ["body", *e.loc()], "msg": e.message} for e in exc.errors()]
        return JSONResponse(errors_body(detail), status_code=422)


def _temporal_answer(exc: TemporalFailed) -> JSONResponse:
    body = error_body(exc.message, kind="temporal_error")
    return JSONResponse(body, status_code=exc.status_code, headers=_retry_after(exc.retry_after))


def _retry_after(seconds: int | None) -> dict[str, str] | None:
    return {"Retry-After": str(seconds)} if seconds is not None else None
