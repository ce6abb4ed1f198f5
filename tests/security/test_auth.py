"""Every API operation requires the right key, and a section's key sees only that section.

Operations are enumerated from the OpenAPI schema, so a route added later (by any branch) is
covered automatically and fails here if it forgets its key dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import httpx

from api.auth import watch_revocations
from store.engine import Store
from store.tables import ApiKey, now_utc
from tests.helpers import (
    ADMIN,
    SectionKeys,
    add_integration,
    cart_campaign,
    create_campaign,
    make_section,
    reachable_user,
)

PUBLIC = {("GET", "/healthz")}
ADMIN_OPS = {("POST", "/api/v1/sections"), ("GET", "/api/v1/sections"), ("POST", "/api/v1/admin/rotate-secrets")}


async def _operations(api: httpx.AsyncClient) -> list[tuple[str, str, str]]:
    """(method, path with dummy ids, auth kind) for every documented operation."""
    schema = (await api.get("/openapi.json")).json()
    ops = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method.upper() not in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                continue
            key = (method.upper(), path)
            if key in PUBLIC:
                continue
            headers = {p["name"].lower() for p in op.get("parameters", []) if p.get("in") == "header"}
            kind = "admin" if key in ADMIN_OPS else "ingestion" if "dy-api-key" in headers else "management"
            concrete = re.sub(r"\{[^}]+\}", "x1", path).replace("/userdata/channels/x1", "/userdata/channels/email")
            ops.append((method.upper(), concrete, kind))
    return ops


async def _call(api: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body: Any = {} if method in {"POST", "PUT", "PATCH"} else None
    return await api.request(method, path, json=body, headers=headers)


async def test_every_operation_is_covered_by_a_key(api: httpx.AsyncClient) -> None:
    """The schema lists the expected operations and each one is classified (a new public route fails here)."""
    ops = await _operations(api)
    assert len(ops) >= 25, ops
    schema = (await api.get("/openapi.json")).json()
    unkeyed = [
        (m.upper(), p) for p, item in schema["paths"].items() for m, op in item.items()
        if (m.upper(), p) not in PUBLIC | ADMIN_OPS
        and not {x["name"].lower() for x in op.get("parameters", []) if x.get("in") == "header"}
        & {"dy-api-key", "authorization", "x-rejoin-key"}
    ]  # fmt: skip
    assert unkeyed == []


async def test_missing_wrong_and_revoked_keys_get_401(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """No key, a malformed key, an unknown key and a revoked key are all 401 on every operation."""
    r = await api.post("/api/v1/keys", json={"kind": "management"}, headers=section.mgmt)
    revoked_mgmt = r.json()
    r = await api.post("/api/v1/keys", json={"kind": "ingestion"}, headers=section.mgmt)
    revoked_ing = r.json()
    for key in (revoked_mgmt, revoked_ing):
        assert (await api.delete(f"/api/v1/keys/{key['id']}", headers=section.mgmt)).status_code == 204
    forged = section.management[:-4] + "AAAA"
    failures = []
    for method, path, kind in await _operations(api):
        if kind == "ingestion":
            variants = [{}, {"dy-api-key": "nonsense"}, {"dy-api-key": section.ingestion[:-4] + "AAAA"},
                        {"dy-api-key": revoked_ing["key"]}]  # fmt: skip
        else:
            variants = [{}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {forged}"},
                        {"Authorization": f"Bearer {revoked_mgmt['key']}"}]  # fmt: skip
        for headers in variants:
            r = await _call(api, method, path, headers)
            if r.status_code != 401:
                failures.append((method, path, list(headers), r.status_code))
    assert failures == []


async def test_a_key_revoked_by_another_process_stops_working_within_a_second(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """Another API process revoked a key this process holds cached (its row written directly here,
    as that process would): this process refuses it once its revocation check has run, long before
    the cache would expire; the keys not revoked keep working."""
    key = (await api.post("/api/v1/keys", json={"kind": "management"}, headers=section.mgmt)).json()
    own = {"Authorization": f"Bearer {key['key']}"}
    assert (await api.get("/api/v1/keys", headers=own)).status_code == 200  # now cached
    with store.session() as s:
        row = s.get(ApiKey, key["id"])
        assert row is not None
        row.revoked_at = now_utc()
        s.add(row)
    assert (await api.get("/api/v1/keys", headers=own)).status_code == 200  # the cache still answers
    watch = asyncio.create_task(watch_revocations(store, interval=0.05))
    try:
        for _ in range(40):
            if (await api.get("/api/v1/keys", headers=own)).status_code == 401:
                break
            await asyncio.sleep(0.05)
        assert (await api.get("/api/v1/keys", headers=own)).status_code == 401
        assert (await api.get("/api/v1/keys", headers=section.mgmt)).status_code == 200
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


async def test_key_of_the_wrong_kind_is_403(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """A valid key of the wrong kind is 403: an ingestion key on a management route, the reverse, and a
    section key on an admin route."""
    failures = []
    for method, path, kind in await _operations(api):
        if kind == "ingestion":
            r = await _call(api, method, path, {"dy-api-key": section.management})
            want = 403
        elif kind == "management":
            r = await _call(api, method, path, {"Authorization": f"Bearer {section.ingestion}"})
            want = 403
        else:
            r = await _call(api, method, path, section.mgmt)  # a valid key, of the wrong kind
            want = 403
        if r.status_code != want:
            failures.append((method, path, r.status_code))
    assert failures == []


async def test_another_sections_key_sees_nothing(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Section B's management key cannot list, read, change or delete anything of section A."""
    integration = await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    other = await make_section(api, name="intruder")
    h = other.mgmt
    assert (await api.get("/api/v1/campaigns", headers=h)).json() == []
    assert (await api.get("/api/v1/integrations", headers=h)).json() == []
    assert (await api.get("/api/v1/outbox", headers=h)).json() == []
    for path in (f"/api/v1/campaigns/{cid}", f"/api/v1/campaigns/{cid}/versions/1", f"/api/v1/users/{dyid}",
                 f"/api/v1/users/{uid}", f"/api/v1/users/{uid}/journeys"):  # fmt: skip
        assert (await api.get(path, headers=h)).status_code == 404, path
    assert (await api.post(f"/api/v1/campaigns/{cid}/pause", headers=h)).status_code == 404
    assert (await api.delete(f"/api/v1/integrations/{integration['id']}", headers=h)).status_code == 404
    keys = (await api.get("/api/v1/keys", headers=section.mgmt)).json()
    assert (await api.delete(f"/api/v1/keys/{keys[0]['id']}", headers=h)).status_code == 404
    # ...and A still works.
    assert (await api.get(f"/api/v1/campaigns/{cid}", headers=section.mgmt)).status_code == 200
    assert (await api.get("/api/v1/sections", headers=ADMIN)).status_code == 200
