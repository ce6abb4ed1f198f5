"""Refuse a NUL character in a request's path or query before any route runs.

PostgreSQL text cannot hold NUL: a path or query parameter holding one (`%00`) that reaches a query
(`GET /api/v1/products/%00`, `/s/%00%00...`, `?channel=%00`) made the database refuse it and the
request a 500, logging a traceback each time. No route has a use for NUL (ids, codes, tokens, channel
names, e-mail addresses never hold one), so it is refused once, here, for every route:

* in the path: 404, as any path naming nothing (no id, code or token Rejoin made holds NUL);
* in a query parameter: 422 naming it (`loc` `["query", name]`), as FastAPI names a bad parameter;
* except on the links recipients follow (`/s/`, `/t/`, `/tremclk`, `/tremop`), which never answer
  an error to a customer for a query parameter: there a parameter holding NUL is dropped, and the
  route works as if it was never sent (a legacy click with a NUL `cuid` still goes to its target).

JSON bodies are checked by `api/limits.py` (`unstorable_text_path`).
"""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body

# Links a recipient follows from a message (api/routes/tracking.py, tracking_legacy.py).
RECIPIENT_LINKS = ("/s/", "/t/", "/tremclk", "/tremop")
NUL_PATH = "no such path (it holds a NUL character)"
NUL_QUERY = "may not contain NUL characters"


def _decoded(segment: bytes) -> str:
    return unquote_plus(segment.decode("latin-1"), encoding="utf-8", errors="replace")


def _holds_nul(segment: bytes) -> bool:
    return b"\x00" in segment or "\x00" in _decoded(segment)


class NulGuard:
    """ASGI middleware: see the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if "\x00" in path:  # the server has percent-decoded the path
            await _answer(send, 404, error_body(NUL_PATH, kind="not_found"))
            return
        query: bytes = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            segments = query.split(b"&")
            bad = [seg for seg in segments if _holds_nul(seg)]
            if bad and path.startswith(RECIPIENT_LINKS):
                kept = b"&".join(seg for seg in segments if not _holds_nul(seg))
                scope = {**scope, "query_string": kept}
            elif bad:
                name = _decoded(bad[0].split(b"=", 1)[0]).replace("\x00", "\\u0000")
                await _answer(send, 422, error_body(NUL_QUERY, f"query.{name}", kind="string_unstorable"), name)
                return
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, content: dict[str, object], query_name: str | None = None) -> None:
    if query_name is not None:
        # The name as one `loc` part even if it holds a dot (`error_body` splits a dotted field).
        content["detail"][0]["loc"] = ["query", query_name]  # type: ignore[index]
        content["error"] = f"query.{query_name}: {NUL_QUERY}"
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
