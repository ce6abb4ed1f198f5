"""Auth edges: a valid key of the wrong kind is 403 on every kind of route (admin routes too), a
missing, wrong or revoked key is 401, and a request whose two credential headers disagree (one
invalid, or two different keys) never authenticates."""

from __future__ import annotations

import httpx

from tests.helpers import ADMIN, SectionKeys

ADMIN_KEY = ADMIN["Authorization"].removeprefix("Bearer ")


async def test_section_keys_on_admin_routes_are_403_and_wrong_or_revoked_keys_401(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    key = (await api.post("/api/v1/keys", json={"kind": "management"}, headers=section.mgmt)).json()
    assert (await api.delete(f"/api/v1/keys/{key['id']}", headers=section.mgmt)).status_code == 204
    for path in ("/api/v1/sections", "/api/v1/admin/rotate-secrets"):
        for valid in (section.management, section.ingestion):
            for headers in ({"Authorization": f"Bearer {valid}"}, {"X-Rejoin-Key": valid}):
                r = await api.request("GET" if path.endswith("sections") else "POST", path, headers=headers)
                assert r.status_code == 403, (path, headers, r.text)
                assert "use the admin key" in r.json()["detail"][0]["msg"]
        for invalid in ("nonsense", key["key"], section.management[:-4] + "AAAA"):
            r = await api.get("/api/v1/sections", headers={"Authorization": f"Bearer {invalid}"})
            assert r.status_code == 401, (invalid, r.text)
    assert (await api.get("/api/v1/sections", headers=ADMIN)).status_code == 200


async def test_the_admin_key_on_section_routes_is_403(api: httpx.AsyncClient, section: SectionKeys) -> None:
    r = await api.get("/api/v1/keys", headers=ADMIN)
    assert r.status_code == 403 and "use a management key" in r.text, r.text
    r = await api.post("/v2/collect/user/event", json={}, headers={"dy-api-key": ADMIN_KEY})
    assert r.status_code == 403 and "use an ingestion key" in r.text, r.text


async def test_credentials_in_both_headers_must_both_be_valid_and_the_same_key(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """A valid X-Rejoin-Key beside an invalid or foreign Bearer key (or the reverse) is 401; another
    scheme's Authorization (a gateway's Basic) beside X-Rejoin-Key is left to the gateway."""
    good = section.management
    other = (await api.post("/api/v1/keys", json={"kind": "management"}, headers=section.mgmt)).json()["key"]
    refused = [
        {"Authorization": "Bearer nonsense", "X-Rejoin-Key": good},
        {"Authorization": f"Bearer {good}", "X-Rejoin-Key": "nonsense"},
        {"Authorization": f"Bearer {good[:-4]}AAAA", "X-Rejoin-Key": good},
        {"Authorization": "Bearer ", "X-Rejoin-Key": good},
        {"Authorization": f"Bearer {other}", "X-Rejoin-Key": good},  # two valid keys: ambiguous
        {"Authorization": f"Bearer {section.ingestion}", "X-Rejoin-Key": "nonsense"},  # 401 beats 403
    ]
    for headers in refused:
        r = await api.get("/api/v1/keys", headers=headers)
        assert r.status_code == 401, (headers, r.text)
    r = await api.get("/api/v1/keys", headers={"Authorization": f"Bearer {section.ingestion}", "X-Rejoin-Key": good})
    assert r.status_code == 403, r.text
    r = await api.get("/api/v1/sections", headers={"Authorization": "Bearer nonsense", "X-Rejoin-Key": ADMIN_KEY})
    assert r.status_code == 401, r.text
    gateway = {"Authorization": "Basic dXNlcjpwYXNz", "X-Rejoin-Key": good}  # a proxy's own credentials
    for headers in ({"Authorization": f"Bearer {good}", "X-Rejoin-Key": good}, {"X-Rejoin-Key": good}, section.mgmt,
                    gateway):  # fmt: skip
        assert (await api.get("/api/v1/keys", headers=headers)).status_code == 200, headers
    both = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Rejoin-Key": ADMIN_KEY}
    assert (await api.get("/api/v1/sections", headers=both)).status_code == 200


async def test_a_key_in_the_other_routes_header_is_told_where_it_goes(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """The ingestion routes read `dy-api-key`, the management routes `Authorization`/`X-Rejoin-Key`:
    a key sent the other way is a 401 that names the right header (it said only "missing API key")."""
    r = await api.post("/v2/collect/user/event", json={}, headers={"Authorization": f"Bearer {section.ingestion}"})
    assert r.status_code == 401 and "dy-api-key header" in r.json()["error"], r.text
    r = await api.get("/api/v1/keys", headers={"dy-api-key": section.management})
    assert r.status_code == 401, r.text
    assert "Authorization: Bearer" in r.json()["error"] and "dy-api-key is read by the ingestion routes only: /v2/collect and /v2/userdata" in r.text


async def test_unknown_paths_and_methods_answer_in_the_one_error_shape(api: httpx.AsyncClient) -> None:
    """The router's 404 and 405 carry `detail` items and `error` like every other error (they were
    Starlette's `{"detail": "Not Found"}`)."""
    r = await api.get("/api/v1/no-such-thing")
    assert r.status_code == 404 and r.json() == {
        "detail": [{"type": "not_found", "loc": [], "msg": "Not Found"}], "error": "Not Found"
    }, r.text
    r = await api.delete("/v2/collect/user/event")
    assert r.status_code == 405 and r.json()["detail"][0]["msg"] == "Method Not Allowed", r.text
    assert "POST" in r.headers["allow"]
