"""The error answers each operation can give, declared in the OpenAPI schema.

FastAPI lists a route's success and 422 only; the 4xx the middleware and the key checks answer
(api/limits.py, api/deps.py) were invisible to client generators and to the schema fuzzing
(tests/security/test_fuzz.py), which therefore never checked their bodies. Each is declared with
`ErrorResponse`, the one error shape (`api/errors.py::error_body`), from what the operation's own
schema says it is (no walk over FastAPI's route internals):

- every operation: 429 (the rate limit; recipients' links and the health check are exempt);
- one taking a key (a `dy-api-key`, `Authorization` or `X-Rejoin-Key` header parameter:
  api/deps.py's management, ingestion and admin checks): 401 and 403;
- one with a path parameter: 404 (another section's or an unknown object);
- a method with a body (POST, PUT, PATCH): 400 (unparseable JSON, nesting, a corrupt compressed
  body), 413 (body size, compressed or decoded), 415 (an unknown Content-Encoding) and 422.
"""

from __future__ import annotations

from typing import Any

from api.errors import ErrorResponse
from api.limits import EXEMPT_PREFIXES

_KEY_HEADERS = {"dy-api-key", "authorization", "x-rejoin-key"}
_BODY_METHODS = {"post", "put", "patch"}
_REF = "#/components/schemas/ErrorResponse"

_DESCRIPTIONS = {
    "400": "The body could not be read: not JSON (or not UTF-8), nested too deep, or a corrupt gzip/deflate stream",
    "401": "Missing, invalid or revoked key",
    "403": "A valid key of the wrong kind for this route",
    "404": "No such object in the key's section",
    "413": "Request body over the size limit (for a compressed body: once decompressed too)",
    "415": "Content-Encoding other than gzip, deflate or identity",
    "422": "Validation error naming the field",
    "429": "Rate limit exceeded; retry after `Retry-After` seconds",
}
_HEADERS = {
    "401": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    "415": {"Accept-Encoding": {"schema": {"type": "string"}, "description": "the codings accepted"}},
    "429": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds until a request is allowed"}},
}


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """The error statuses the operation (`method` in lower case, as the schema keys it) can answer."""
    found = set() if path.startswith(EXEMPT_PREFIXES) else {"429"}
    params = operation.get("parameters", [])
    if any(p.get("in") == "header" and str(p.get("name", "")).lower() in _KEY_HEADERS for p in params):
        found |= {"401", "403"}
    if any(p.get("in") == "path" for p in params):
        found.add("404")
    if method in _BODY_METHODS:
        found |= {"400", "413", "415", "422"}
    return sorted(found)


def document_error_responses(schema: dict[str, Any]) -> None:
    """Add each operation's error responses to `schema` (an operation's own declarations win)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    model = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(model.pop("$defs", {}))
    components["ErrorResponse"] = model
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in error_statuses(path, method, operation):
                answer: dict[str, Any] = {
                    "description": _DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": {"$ref": _REF}}},
                }
                if status in _HEADERS:
                    answer["headers"] = _HEADERS[status]
                responses.setdefault(status, answer)
