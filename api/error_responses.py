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
  body), 413 (body size, compressed or decoded), 415 (an unknown Content-Encoding) and 422;
- the operations in `RAISED` (a static list, read from the routes): 409, 502 and 503.

409, 502 and 503 depend on what the handler does, which the schema does not show: `RAISED` lists,
per operation, those its handler or the helpers of its module it calls can answer. 409: a
`Conflict` (`api/errors.py`), or `security.rotation.RotationIncomplete`. 503: an `Unavailable`,
Temporal unreachable (`AppState.client`) or busy (a transient error of a call in
`calling_temporal`), both with `Retry-After`, or a stored secret no configured key decrypts
(`security.crypto.UndecryptableSecret`). 502: Temporal refused a call made in `calling_temporal`
(api/temporal_errors.py). tests/api/test_error_declarations.py derives the same from the routes'
source and fails when the two differ.
"""

from __future__ import annotations

from typing import Any

from api.errors import ErrorResponse
from api.limits import EXEMPT_PREFIXES

_KEY_HEADERS = {"dy-api-key", "authorization", "x-rejoin-key"}
_BODY_METHODS = {"post", "put", "patch"}
_REF = "#/components/schemas/ErrorResponse"

_CONFLICT = "409"
_BAD_GATEWAY = "502"
_UNAVAILABLE = "503"
_BOTH = (_CONFLICT, _UNAVAILABLE)
_TEMPORAL = (_BAD_GATEWAY, _UNAVAILABLE)  # a Temporal call: refused (502), unreachable or busy (503)
_CONFLICT_TEMPORAL = (_CONFLICT, *_TEMPORAL)

# (method, path) -> the statuses among 409, 502 and 503 the operation can answer; why, per operation.
# Reading journeys (their live view) and campaigns (their schedule) answers without Temporal: none.
RAISED: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/api/v1/sections"): (_CONFLICT,),  # legacy section id taken
    ("patch", "/api/v1/section"): (_CONFLICT,),  # legacy section id taken
    ("post", "/api/v1/campaigns"): _TEMPORAL,  # its Temporal Schedule not created
    ("put", "/api/v1/campaigns/{campaign_id}"): _CONFLICT_TEMPORAL,  # archived, type changed; schedule not updated
    ("post", "/api/v1/campaigns/{campaign_id}/activate"): _CONFLICT_TEMPORAL,  # no such transition; schedule
    ("post", "/api/v1/campaigns/{campaign_id}/pause"): _CONFLICT_TEMPORAL,
    ("post", "/api/v1/campaigns/{campaign_id}/archive"): _CONFLICT_TEMPORAL,
    # a journey still runs, an ambiguous user ref; Temporal
    ("post", "/api/v1/campaigns/{campaign_id}/preview"): _CONFLICT_TEMPORAL,
    ("post", "/api/v1/campaigns/{campaign_id}/render"): _BOTH,  # an ambiguous user ref; the address undecryptable
    ("post", "/api/v1/campaigns/{campaign_id}/runs"): _TEMPORAL,  # the run not started
    # Temporal unreachable; a journey's failure is counted in the 503's own body (`CampaignStopOut`).
    ("post", "/api/v1/campaigns/{campaign_id}/journeys/exit"): (_UNAVAILABLE,),
    ("post", "/api/v1/journeys/{journey_id}/exit"): _CONFLICT_TEMPORAL,  # ended, start pending; Temporal
    ("delete", "/api/v1/users/{user_ref}"): _CONFLICT_TEMPORAL,  # an ambiguous ref; Temporal; the person kept changing
    # A ref that is one user's device id and another's CUID (`store.users.AmbiguousUserRef`).
    ("get", "/api/v1/users/{user_ref}"): (_CONFLICT,),
    ("put", "/api/v1/users/{user_ref}/test"): (_CONFLICT,),
    ("patch", "/api/v1/users/{user_ref}/attributes"): (_CONFLICT,),
    ("get", "/api/v1/users/{user_ref}/journeys"): (_CONFLICT,),
    ("post", "/api/v1/integrations"): (_CONFLICT,),  # the channel's integration exists
    ("get", "/api/v1/integrations/{integration_id}"): (_UNAVAILABLE,),  # its secrets undecryptable
    ("put", "/api/v1/integrations/{integration_id}"): (_UNAVAILABLE,),
    ("delete", "/api/v1/integrations/{integration_id}"): (_CONFLICT,),  # campaigns send through it
    ("post", "/api/v1/integrations/{integration_id}/test"): (_UNAVAILABLE,),
    ("post", "/api/v1/integrations/{integration_id}/subscribers/sync"): _CONFLICT_TEMPORAL,  # provisioning; S3/Temporal
    ("post", "/api/v1/integrations/{integration_id}/subscribers/credentials"): _BOTH,  # no list, no more; S3
    ("delete", "/api/v1/templates/{template_id}"): (_CONFLICT,),  # used by campaigns
    ("post", "/api/v1/feeds"): _TEMPORAL,  # its Temporal Schedule
    ("put", "/api/v1/feeds/{feed_id}/file"): _CONFLICT_TEMPORAL,  # a sync running, not an upload feed; S3; Temporal
    ("post", "/api/v1/feeds/{feed_id}/sync"): _CONFLICT_TEMPORAL,  # a sync running; Temporal
    ("post", "/api/v1/admin/rotate-secrets"): (_CONFLICT,),  # RotationIncomplete
}

_DESCRIPTIONS = {
    "400": "The body could not be read: not JSON (or not UTF-8), nested too deep, or a corrupt gzip/deflate stream",
    "401": "Missing, invalid or revoked key",
    "403": "A valid key of the wrong kind for this route",
    "404": "No such object in the key's section",
    "413": "Request body over the size limit (for a compressed body: once decompressed too)",
    "415": "Content-Encoding other than gzip, deflate or identity",
    "409": "The object's state does not allow it, or a user ref names two users (the message says why)",
    "422": "Validation error naming the field",
    "429": "Rate limit exceeded; retry after `Retry-After` seconds",
    "502": "Temporal refused the call (not a transient error): the message names the operation and Temporal's status",
    "503": "A service it needs is unavailable (Temporal, the object store, a decryption key); retry later",
}
_HEADERS = {
    "401": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    "415": {"Accept-Encoding": {"schema": {"type": "string"}, "description": "the codings accepted"}},
    "429": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds until a request is allowed"}},
    "503": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait (Temporal busy)"}},
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
    found.update(RAISED.get((method, path), ()))
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
                if status in _BOTH and status in responses:
                    _also_error_body(responses[status])
                responses.setdefault(status, answer)


def _also_error_body(declared: dict[str, Any]) -> None:
    """An operation's own 409/503 body may also be `ErrorResponse`: a campaign-wide stop's 503 is
    its counts when some journeys failed, the one error shape when Temporal is unreachable."""
    content = declared.setdefault("content", {}).setdefault("application/json", {})
    schema = content.get("schema")
    if schema is None:
        content["schema"] = {"$ref": _REF}
    elif schema != {"$ref": _REF} and {"$ref": _REF} not in schema.get("anyOf", []):
        content["schema"] = {"anyOf": [schema, {"$ref": _REF}]}
