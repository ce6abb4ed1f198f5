"""Integer query and path parameters are bounded where they are declared: a 422 naming the parameter,
never the database's overflow.

Before: `GET /api/v1/outbox?after_id=2147483648` reached PostgreSQL's INTEGER column and answered
500 ("integer out of range"); 2**63 failed on SQLite too (no 64-bit integer holds it)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.helpers import SectionKeys

# Just past PostgreSQL's INTEGER, just past BIGINT (and SQLite's integer), and below BIGINT's least.
OVERFLOWING = (2**31, 2**63, -(2**63) - 1)


async def test_outbox_after_id_past_integer_range_is_422(api: httpx.AsyncClient, section: SectionKeys) -> None:
    for after_id in OVERFLOWING:
        r = await api.get("/api/v1/outbox", params={"after_id": after_id}, headers=section.mgmt)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["query", "after_id"], r.text
    r = await api.get("/api/v1/outbox", params={"after_id": 2**31 - 1}, headers=section.mgmt)
    assert r.status_code == 200 and r.json() == [], r.text


def _integer_params(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, method, parameter) for every integer query or path parameter in the schema."""
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                kinds = [param.get("schema", {}), *param.get("schema", {}).get("anyOf", [])]
                if param["in"] in ("query", "path") and any(k.get("type") == "integer" for k in kinds):
                    found.append((path, method, param))
    return found


def _bound(param: dict[str, Any], key: str) -> Any:
    kinds = [param["schema"], *param["schema"].get("anyOf", [])]
    return next((k[key] for k in kinds if key in k), None)


async def test_every_integer_parameter_is_bounded_and_never_a_server_error(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Walks the OpenAPI schema: each integer parameter declares a range within BIGINT, and a GET
    sent 2**31 and 2**63 (a valid key, other parameters at placeholders) is never a 5xx."""
    schema = (await api.get("/openapi.json")).json()
    params = _integer_params(schema)
    assert any(p["name"] == "after_id" for _, _, p in params)  # the walk sees the parameters at all
    for path, method, param in params:
        if method != "get":
            continue
        declared = schema["paths"][path][method].get("parameters", [])
        headers = section.ing if any(p["name"] == "dy-api-key" for p in declared) else section.mgmt
        for value in OVERFLOWING:
            url = re.sub(r"\{[^}]+\}", "x", path.replace("{" + param["name"] + "}", str(value)))
            query = {param["name"]: value} if param["in"] == "query" else {}
            r = await api.get(url, params=query, headers=headers)
            where = f"GET {url} {query}"
            assert r.status_code < 500, f"{where}: {r.status_code} {r.text}"
            assert r.status_code == 422, f"{where}: {r.status_code} {r.text}"
            assert r.json()["detail"][0]["loc"] == [param["in"], param["name"]], f"{where}: {r.text}"
    for path, method, param in params:
        where = f"{method.upper()} {path} {param['in']} {param['name']}"
        assert _bound(param, "maximum") is not None and _bound(param, "maximum") < 2**63, where
        assert _bound(param, "minimum") is not None and _bound(param, "minimum") >= -(2**63), where
