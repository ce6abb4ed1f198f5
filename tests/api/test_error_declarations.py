"""Every 409 and 503 an operation can answer is declared in the OpenAPI schema.

Before: `api/error_responses.py` declared 400, 401, 403, 404, 413, 415 and 429 only, so a
`Conflict` (409) or an `Unavailable` (503) was an undocumented status to client generators and
to schemathesis' status-code conformance check."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Any

import httpx
from fastapi.routing import APIRoute

import api.routes
from api.main import create_app
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys, add_integration

# Helpers that catch what they call: reading a campaign never fails because Temporal is down (its
# `schedule_error` says so), nor reading journeys (`live_error`); ingestion stores the events and
# defers their dispatch to the sweeper.
CATCHES = {
    ("api.routes.campaigns", "_with_schedule"),
    ("api.routes.journeys", "_with_live"),
    ("api.routes.collect", "_ingest"),
}


def _statuses(node: ast.AST) -> set[str]:
    """409, 502 and 503 as the code in `node` can answer them (see api/error_responses.py)."""
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id in ("Conflict", "rotate_all"):  # rotate_all: RotationIncomplete
            found.add("409")
        elif isinstance(n, ast.Name) and n.id == "Unavailable":
            found.add("503")
        elif isinstance(n, ast.Name) and n.id == "calling_temporal":  # api/temporal_errors.py
            found |= {"502", "503"}
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("client", "decrypt"):
            found.add("503")  # AppState.client: Temporal unreachable; SecretBox.decrypt: UndecryptableSecret
    return found


def _derived(module: ModuleType, endpoint: Any) -> set[str]:
    """What the endpoint and the functions of its module it names (transitively) can answer."""
    tree = ast.parse(inspect.getsource(module))
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
    seen: set[str] = set()
    todo = [endpoint.__name__]
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or (module.__name__, name) in CATCHES:
            continue
        seen.add(name)
        found |= _statuses(functions[name])
        todo += _named_functions(functions[name], set(functions))
    return found


def _named_functions(function: ast.FunctionDef | ast.AsyncFunctionDef, module_functions: set[str]) -> list[str]:
    """The module's functions `function` names (not its locals of the same name: `read, connect = ...`)."""
    names = [n for n in ast.walk(function) if isinstance(n, ast.Name)]
    local = {n.id for n in names if isinstance(n.ctx, ast.Store)} | {a.arg for a in ast.walk(function.args)
                                                                      if isinstance(a, ast.arg)}  # fmt: skip
    return [n.id for n in names if isinstance(n.ctx, ast.Load) and n.id in module_functions and n.id not in local]


def _operations() -> list[tuple[str, str, set[str]]]:
    out = []
    for info in pkgutil.iter_modules(api.routes.__path__):
        module = importlib.import_module(f"api.routes.{info.name}")
        for route in module.router.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                for method in route.methods or ():
                    out.append((method.lower(), route.path, _derived(module, route.endpoint)))
    return out


def _declared(schema: dict[str, Any], method: str, path: str) -> set[str]:
    return set(schema["paths"][path][method]["responses"]) & {"409", "502", "503"}


def test_declared_409_and_503_are_those_the_routes_can_answer(tmp_path: Any) -> None:
    schema = create_app(Settings(data_dir=tmp_path, admin_key="a", rate_limit_per_second=0.0)).openapi()
    operations = _operations()
    assert len(operations) > 50  # the walk sees the routes at all
    assert ("delete", "/api/v1/integrations/{integration_id}", {"409"}) in operations  # through `_in_use`
    wrong = {
        f"{method.upper()} {path}": {"declared": sorted(_declared(schema, method, path)), "raised": sorted(derived)}
        for method, path, derived in operations
        if _declared(schema, method, path) != derived
    }
    assert wrong == {}


async def test_a_conflict_answered_is_declared(api: httpx.AsyncClient, section: SectionKeys) -> None:
    await add_integration(api, section)
    body = {"channel": "email", "name": "again", "kind": "outbox", "config": {}}
    r = await api.post("/api/v1/integrations", json=body, headers=section.mgmt)
    assert r.status_code == 409, r.text
    schema = (await api.get("/openapi.json")).json()
    answer = schema["paths"]["/api/v1/integrations"]["post"]["responses"].get("409")
    assert answer is not None and answer["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }


async def test_temporal_unreachable_is_a_declared_503(
    api: httpx.AsyncClient, section: SectionKeys, settings: Settings, store: Store
) -> None:
    body = {"kind": "product", "name": "F", "source": "url", "url": "http://127.0.0.1:9/feed.csv"}
    r = await api.post("/api/v1/feeds", json=body, headers=section.mgmt)
    assert r.status_code == 201, r.text
    feed_id = r.json()["id"]
    down = create_app(settings.model_copy(update={"temporal_address": "127.0.0.1:1"}), store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=down), base_url="http://down.test") as offline:
        r = await offline.post(f"/api/v1/feeds/{feed_id}/sync", headers=section.mgmt)
        assert r.status_code == 503, r.text
        schema = (await offline.get("/openapi.json")).json()
    assert "503" in schema["paths"]["/api/v1/feeds/{feed_id}/sync"]["post"]["responses"]
    # A route's own 503 (a campaign-wide stop's counts) admits the error shape Temporal's absence gives.
    own = schema["paths"]["/api/v1/campaigns/{campaign_id}/journeys/exit"]["post"]["responses"]["503"]
    assert own["content"]["application/json"]["schema"] == {"anyOf": [
        {"$ref": "#/components/schemas/CampaignStopOut"}, {"$ref": "#/components/schemas/ErrorResponse"},
    ]}  # fmt: skip
