"""The request's own `user.cuid` + `cuidType` identifies the user by the same rule as an identify event:
a plain email is kept only as its hash and links the user to that email's opt-in."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import User
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    new_dyid,
    opt_in,
    outbox,
    reachable_user,
)

EMAIL = "kim@example.com"
HASHED = hashlib.sha256(EMAIL.encode()).hexdigest()


async def _collect_as(
    api: httpx.AsyncClient, sec: SectionKeys, dyid: str, cuid: str, cuid_type: str, *events: dict[str, Any]
) -> None:
    user = {"dyid": dyid, "cuid": cuid, "cuidType": cuid_type, "active_consent_accepted": True}
    r = await api.post("/v2/collect/user/event", json={"user": user, "events": list(events)}, headers=sec.ing)
    assert r.status_code == 202, r.text


async def _user(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> httpx.Response:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize(
    ("cuid", "cuid_type"), [(" Kim@Example.com ", "email"), (HASHED, "he"), (HASHED.upper(), "hashedEmail")]
)
async def test_user_cuid_email_is_stored_hashed_and_reaches_the_opted_in_email(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, cuid: str, cuid_type: str
) -> None:
    """A plain email as `user.cuid` (cuidType email) is stored as its hash, never in clear (the API
    shows the hash); an already hashed one (cuidType he) passes through, in lower case (a digest in
    capitals is the same person). Either way the user is
    linked to the email, so the journey step reaches the opt-in instead of skipping with `no_identifier`."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    await opt_in(api, section, "email", "email", EMAIL)
    dyid = new_dyid()
    await _collect_as(api, section, dyid, cuid, cuid_type, add_to_cart("sku-k", 15.0))
    r = await _user(api, section, dyid)
    assert r.json()["cuid"] == HASHED and EMAIL not in r.text.lower()
    uid = str(r.json()["id"])
    with store.session() as s:
        user = s.get(User, uid)
        assert user is not None and (user.cuid, user.cuid_type) == (HASHED, "he")
    result = await journey_result(env.client, section, cid, uid)
    assert result.status == "completed" and result.sent == 1, result
    assert all(d.reason != "no_identifier" for d in result.decisions), result.decisions
    assert [m["recipient"] for m in await outbox(api, section)] == [EMAIL]


async def test_user_cuid_email_joins_the_person_a_login_identified(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """A device whose request carries the person's plain email as `user.cuid` becomes the user a login
    with the hashed email identified, and an anonymous device user identifies on that request."""
    await add_integration(api, section)
    person_dyid, person = await reachable_user(api, section)  # logged in with hashedEmail
    anon_dyid = new_dyid()
    await collect(api, section, anon_dyid, add_to_cart("sku-a", 5.0))  # no cuid yet: an anonymous user
    anon = str((await _user(api, section, anon_dyid)).json()["id"])
    assert anon != person
    plain = f"user{person_dyid}@EXAMPLE.com"  # reachable_user's email, cased differently
    await _collect_as(api, section, anon_dyid, plain, "email", add_to_cart("sku-b", 6.0))
    assert (await _user(api, section, anon_dyid)).json()["id"] == person
    assert (await _user(api, section, anon)).json()["id"] == person  # merged, as a login would


async def test_a_kept_user_cuid_with_a_slash_is_422(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """As an identification event's cuid: one kept as written may not contain '/'; a plain email is
    kept only as its hash, so it may."""
    user = {"dyid": new_dyid(), "cuid": "crm/42", "active_consent_accepted": True}
    body = {"user": user, "events": [add_to_cart("s", 1.0)]}
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    assert r.status_code == 422 and "user.cuid must not contain '/'" in r.text, r.text
    assert "user" in r.json()["detail"][0]["loc"], r.json()
    await _collect_as(api, section, new_dyid(), "a/b@example.com", "email", add_to_cart("s", 1.0))
