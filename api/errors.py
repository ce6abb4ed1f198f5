"""Domain errors and how the API renders them: one JSON shape, naming the field at fault."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.events import EventValidationError
from domain.field_error import FieldError
from security.crypto import UndecryptableSecret
from security.rotation import RotationIncomplete


class RejoinError(Exception):
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


def error_body(message: str, field: str | None = None, kind: str = "rejoin_error") -> dict[str, Any]:
    # Same item shape as FastAPI's documented ValidationError (type, loc, msg), so every 422 the
    # API returns matches its OpenAPI schema.
    detail: dict[str, Any] = {"type": kind, "loc": field.split(".") if field else [], "msg": message}
    return {"detail": [detail], "error": message if not field else f"{field}: {message}"}


def validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's validation errors reduced to `type`, `loc` and `msg`.

    The default handler also returns each error's `input` (for a missing field, the whole body:
    an integration's password, a shopper's e-mail address) and `ctx` (which can quote the input,
    e.g. the text of a JSON decode error); neither leaves the API."""
    return [{"type": str(e["type"]), "loc": _loc(e), "msg": str(e["msg"])} for e in errors]


def _loc(error: Any) -> list[Any]:
    """The error's `loc`, extended by the field a model validator named (`domain/field_error.py`)."""
    cause = (error.get("ctx") or {}).get("error")
    return [*error["loc"], *cause.loc()] if isinstance(cause, FieldError) else list(error["loc"])


_NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "list_type"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = validation_detail(exc.errors())
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type:
            # FastAPI reads JSON only under a JSON content type: any other body reaches the model as
            # raw bytes, and "Input should be a valid dictionary" does not say what went wrong.
            for d in detail:
                if d["loc"] == ["body"] and d["type"] in _NOT_AN_OBJECT:
                    sent = f"as {content_type.split(';')[0]}" if content_type else "without a Content-Type"
                    d["msg"] = f"the body was sent {sent}; send JSON with Content-Type: application/json"
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The router's own answers (an unknown path 404, a wrong method 405) in the one error shape,
        # not Starlette's `{"detail": "Not Found"}`: a client parses every error the same way.
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        body = error_body(message, kind="not_found" if exc.status_code == 404 else "http_error")
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RejoinError)
    async def _rejoin(_: Request, exc: RejoinError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(error_body(exc.message, exc.field), status_code=exc.status_code, headers=headers)

    @app.exception_handler(UndecryptableSecret)
    async def _undecryptable(_: Request, exc: UndecryptableSecret) -> JSONResponse:
        # This process lacks a key the stored value needs (started before a rotation, or a key
        # dropped too early): the operator's to fix, and the request may succeed on another process.
        return JSONResponse(error_body(str(exc)), status_code=503)

    @app.exception_handler(RotationIncomplete)
    async def _rotation(_: Request, exc: RotationIncomplete) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=409)

    @app.exception_handler(EventValidationError)
    async def _event(_: Request, exc: EventValidationError) -> JSONResponse:
        body = error_body(exc.message, exc.place)
        body["detail"][0]["loc"] = ["body", *exc.loc()]  # as FastAPI gives its own: list indexes as numbers
        return JSONResponse(body, status_code=422)
