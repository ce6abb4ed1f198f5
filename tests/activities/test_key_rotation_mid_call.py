"""An operator rotates an integration's key while a send's attempt is under way: the new key saved
in Rejoin, the old one revoked at the vendor. The attempt already read the old key and gets a 401;
that refusal is of credentials the integration no longer has, so the send is retried with the new
ones instead of failing for good (a trial's operator lost a shopper's message that way)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    eventually,
    journey_result,
    reachable_user,
)
from tests.provider_server import ProviderServer, Received, Reply

PATH = "/rotating"


def _config(provider: ProviderServer, key: str) -> dict[str, Any]:
    return {"url": provider.url(PATH), "headers": [{"key": "X-Api-Key", "value": key, "secret": True}]}


async def test_a_key_rotated_during_an_attempt_is_retried_with_the_new_key(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    old, new = "k-old-" + secrets.token_hex(4), "k-new-" + secrets.token_hex(4)

    def vendor(req: Received) -> Reply:  # the old key is revoked by the time its attempt is answered
        if req.headers.get("x-api-key") == new:
            return Reply(200, {"id": "m-1"})
        return Reply(401, "invalid API key", delay=2.0)

    fresh_provider.handler(PATH, vendor)
    integration = await add_integration(api, section, kind="custom_http", config=_config(fresh_provider, old))
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))

    async def attempt_under_way() -> None:
        assert fresh_provider.to(PATH), "no attempt yet"

    await eventually(attempt_under_way)
    body = {"channel": "email", "name": "rotated", "kind": "custom_http", "identifier_type": "email",
            "config": _config(fresh_provider, new)}  # fmt: skip
    r = await api.put(f"/api/v1/integrations/{integration['id']}", json=body, headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    assert [c.headers.get("x-api-key") for c in fresh_provider.to(PATH)] == [old, new]
    [journey] = (await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)).json()
    [send] = journey["sends"]
    assert send["status"] == "accepted" and send["attempts"] == 2 and not send["possible_duplicate"], send


async def test_a_401_with_the_current_key_still_fails_for_good(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """No rotation: a refused key is the operator's to fix, one call, the step failed."""
    fresh_provider.default(PATH, Reply(401, "invalid API key"))
    await add_integration(api, section, kind="custom_http", config=_config(fresh_provider, "k-" + secrets.token_hex(4)))
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, uid)).sent == 0
    assert len(fresh_provider.to(PATH)) == 1
