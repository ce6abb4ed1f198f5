"""The rate limiter's buckets for the admin key and for revoked keys.

Before: the admin key was never in the auth cache (it is compared with the setting, not looked up),
so it spent its client address's bucket with every request without a verified key from that host: a
flood of made-up keys throttled the operator, and the operator's script throttled the host. A
revoked key kept the bucket of its own it got once verified, so its requests never fell back to the
address bucket that other unverified requests share."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from api import auth
from store.engine import Store
from store.tables import ApiKey, now_utc
from tests.helpers import ADMIN, SectionKeys, make_section
from tests.security import test_rate_limit_unverified_keys as unverified
from tests.security.test_rate_limit_unverified_keys import BURST, fake_key

# That module's fixtures: the app with a tight limit (burst 10), clients each from an address of its own.
limited_app = unverified.limited_app
client_at = unverified.client_at


async def _drain(api: httpx.AsyncClient) -> None:
    """Spend the address's bucket with made-up keys, up to its first 429."""
    statuses = [(await api.get("/api/v1/section", headers={"X-Rejoin-Key": fake_key()})).status_code]
    while statuses[-1] != 429:
        assert len(statuses) <= BURST, statuses
        statuses.append((await api.get("/api/v1/section", headers={"X-Rejoin-Key": fake_key()})).status_code)


async def test_the_admin_key_has_a_bucket_of_its_own(client_at: Callable[[str], httpx.AsyncClient]) -> None:
    """A flood from the operator's host does not throttle the admin key, nor the reverse; the admin
    key's own limit holds."""
    flooded = client_at("203.0.113.30")
    await _drain(flooded)
    # An admin request that answers at once (a 422, no database): the bucket refills one token every
    # 2 s, and listing every section of a full suite's database took longer than that for ten.
    admin = [(await flooded.post("/api/v1/sections", json={}, headers=ADMIN)).status_code for _ in range(BURST + 1)]
    assert admin == [422] * BURST + [429], admin
    r = await flooded.post("/api/v1/sections", json={}, headers=ADMIN)
    assert r.json()["error"] == "rate limit exceeded for this key", r.text
    quiet = client_at("203.0.113.31")
    assert [(await quiet.post("/api/v1/sections", json={}, headers=ADMIN)).status_code for _ in range(2)] == [429, 429]
    r = await quiet.get("/api/v1/section", headers={"X-Rejoin-Key": fake_key()})
    assert r.status_code == 401, r.text  # the admin key spent none of its address's tokens


async def _doomed_key(api: httpx.AsyncClient) -> tuple[SectionKeys, dict[str, str], str]:
    """A section (made from `api`'s address) and a second management key of it: headers and id."""
    sec = await make_section(api, "revoking")
    r = await api.post("/api/v1/keys", json={"kind": "management", "label": "doomed"}, headers=sec.mgmt)
    assert r.status_code == 201, r.text
    return sec, {"X-Rejoin-Key": r.json()["key"]}, r.json()["id"]


async def _verified_then_drained(api: httpx.AsyncClient, doomed: dict[str, str]) -> None:
    assert (await api.get("/api/v1/section", headers=doomed)).status_code == 200  # verified: its own bucket
    await _drain(api)
    assert (await api.get("/api/v1/section", headers=doomed)).status_code == 200  # on its own bucket


async def test_a_key_revoked_here_falls_back_to_its_address_bucket(
    client_at: Callable[[str], httpx.AsyncClient],
) -> None:
    operator = client_at("198.51.100.40")
    sec, doomed, key_id = await _doomed_key(operator)
    api = client_at("203.0.113.40")
    await _verified_then_drained(api, doomed)
    assert (await operator.delete(f"/api/v1/keys/{key_id}", headers=sec.mgmt)).status_code == 204
    r = await api.get("/api/v1/section", headers=doomed)
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "rate limit exceeded for this client (requests without a verified key)", r.text
    # From an address with tokens left, it is what it is: a revoked key.
    assert (await client_at("203.0.113.41").get("/api/v1/section", headers=doomed)).status_code == 401


async def test_a_key_revoked_by_another_process_falls_back_to_its_address_bucket(
    client_at: Callable[[str], httpx.AsyncClient], store: Store
) -> None:
    operator = client_at("198.51.100.42")
    _, doomed, key_id = await _doomed_key(operator)
    api = client_at("203.0.113.42")
    await _verified_then_drained(api, doomed)
    with store.session() as s:  # another API process revoked it
        row = s.get(ApiKey, key_id)
        assert row is not None
        row.revoked_at = now_utc()
        s.add(row)
    assert auth.forget_revoked(store) == [key_id]  # this process's revocation check
    r = await api.get("/api/v1/section", headers=doomed)
    assert r.status_code == 429, r.text
