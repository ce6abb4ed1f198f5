"""Error answers an Experience API client reads: every `loc` starts with where the input came from
(docs/api.md), and `POST /v2/serve/user/choose` says why it is not served.

Before: `{"user": {}}` was at `["body"]` (not the `user` it lacks), an SMS opt-in without an SMS
integration at `["body", "channel"]` (a path parameter), a 404 or 409 naming a path parameter at
`["user_ref"]`, `["journey_id"]`, with no source; choose answered a bare "Not Found"."""

from __future__ import annotations

import httpx

from tests.helpers import SectionKeys, add_integration, cart_campaign, create_campaign, new_dyid


async def test_a_user_without_any_id_is_located_at_user(api: httpx.AsyncClient, section: SectionKeys) -> None:
    for path, body in [
        ("/v2/collect/user/event", {"user": {}, "events": [{"name": "Visit"}]}),
        ("/v2/collect/user/pageview", {"user": {"active_consent_accepted": True},
                                       "context": {"page": {"type": "OTHER"}}}),
    ]:  # fmt: skip
        r = await api.post(path, json=body, headers=section.ing)
        assert r.status_code == 422, r.text
        item = r.json()["detail"][0]
        assert item["loc"] == ["body", "user"] and "dyid, dyid_server, id or cuid" in item["msg"], r.text
        assert r.json()["error"].startswith("user: "), r.text


async def test_an_opt_in_channel_is_a_path_parameter(api: httpx.AsyncClient, section: SectionKeys) -> None:
    body = {"identifier": {"type": "phoneNumber", "value": "+12195551212"}}
    r = await api.post("/v2/userdata/channels/sms/opt-in", json=body, headers=section.ing)
    assert r.status_code == 422 and "no sms integration" in r.text, r.text
    assert r.json()["detail"][0]["loc"] == ["path", "channel"], r.text
    r = await api.post("/v2/userdata/channels/fax/opt-out", json=body, headers=section.ing)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "channel"], r.text


async def test_404s_and_409s_name_their_field_with_its_source(api: httpx.AsyncClient, section: SectionKeys) -> None:
    mgmt = section.mgmt
    for method, path in [
        ("GET", "/api/v1/users/nobody-here"), ("DELETE", "/api/v1/users/nobody-here"),
        ("GET", "/api/v1/users/nobody-here/journeys"), ("PUT", "/api/v1/users/nobody-here/test"),
    ]:  # fmt: skip
        body = {"is_test": True} if method == "PUT" else None
        r = await api.request(method, path, json=body, headers=mgmt)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["path", "user_ref"], (path, r.text)
        assert r.json()["error"] == "path.user_ref: no such user", r.text
    r = await api.get("/api/v1/journeys/nope", headers=mgmt)
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "journey_id"], r.text
    r = await api.get("/api/v1/campaigns/nope", headers=mgmt)
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "campaign_id"], r.text
    # a body field: under `body`, as a 422's
    await add_integration(api, section)
    again = {"channel": "email", "name": "again", "kind": "outbox", "config": {}}
    r = await api.post("/api/v1/integrations", json=again, headers=mgmt)
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "channel"], r.text
    assert r.json()["error"].startswith("channel: "), r.text
    # a field that is no input of the request (the campaign's state, on a route without a body): bare
    cid = await create_campaign(api, section, cart_campaign())
    assert (await api.post(f"/api/v1/campaigns/{cid}/archive", headers=mgmt)).status_code == 200
    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=mgmt)
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["status"], r.text


async def test_choose_answers_a_404_saying_it_is_not_served(api: httpx.AsyncClient, section: SectionKeys) -> None:
    body = {"user": {"dyid": new_dyid()}, "selector": {"names": ["Hero"]}, "options": {"isImplicitPageview": True}}
    for headers in (section.ing, {}):  # with the key or without: the same answer
        r = await api.post("/v2/serve/user/choose", json=body, headers=headers)
        assert r.status_code == 404 and set(r.json()) == {"detail", "error"}, r.text
        item = r.json()["detail"][0]
        assert item["type"] == "not_found" and "does not serve choose" in item["msg"], r.text
        assert "POST /v2/collect/user/pageview" in item["msg"], r.text
    schema = (await api.get("/openapi.json")).json()
    assert "/v2/serve/user/choose" not in schema["paths"]


async def test_a_validators_message_is_given_as_written(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """pydantic put "Value error, " before a validator's own words (a re-probe trial's finding)."""
    body = {"user": {"dyid": new_dyid(), "cuid": "a/b", "cuidType": "id"}, "events": [{"name": "Visit"}]}
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"] == "user.cuid must not contain '/'", r.text
    assert "Value error" not in r.text, r.text
