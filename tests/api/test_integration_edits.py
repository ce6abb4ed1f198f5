"""Editing integrations and their error answers: secret headers kept by name, 422s that echo
nothing of the request, and a test call that waits for a provider exactly as long as deliveries do."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from providers.custom_http import CustomHttpConfig
from providers.http import provider_call_timeouts
from providers.secret_fields import MASK
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys, custom_http_integration, make_section
from tests.provider_server import ProviderServer, Received, Reply

A_SECRET = "AAA-SECRET"
B_SECRET = "BBB-SECRET"
PASSWORD = "LEAKME-PW"


def header(key: str, value: str, secret: bool = True) -> dict[str, Any]:
    return {"key": key, "value": value, "secret": secret}


def integration(server: ProviderServer, headers: list[dict[str, Any]] | dict[str, str]) -> dict[str, Any]:
    basic = {"type": "basic", "username": "shop", "password": PASSWORD}
    return custom_http_integration(server.url("/send"), headers, basic)


def masked(server: ProviderServer, headers: list[dict[str, Any]] | dict[str, str]) -> dict[str, Any]:
    """The body a UI sends back after a read: every secret, the password too, as the mask."""
    body = integration(server, headers)
    body["config"]["auth"]["password"] = MASK
    return body


async def create_ab(api: httpx.AsyncClient, sec: SectionKeys, server: ProviderServer) -> str:
    """An integration with two secret headers, X-A and X-B; returns its id."""
    body = integration(server, [header("X-A", A_SECRET), header("X-B", B_SECRET)])
    r = await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def sent_by_test_call(api: httpx.AsyncClient, sec: SectionKeys, server: ProviderServer, iid: str) -> Received:
    """What the vendor receives when the integration sends (through the test call)."""
    r = await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {"hi": 1}}, headers=sec.mgmt)
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    return server.to("/send")[-1]


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"shop:{password}".encode()).decode()


# ------------------------------------------------------------------ A. secret headers by name


async def test_reordered_masked_headers_keep_their_own_secrets(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """Masked header values sent back in another order (and another letter case) keep the secret
    of the header with the same name, not of the header that used to sit at that position; the
    masked password is kept as before."""
    iid = await create_ab(api, section, fresh_provider)
    body = masked(fresh_provider, [header("x-b", MASK), header("X-A", MASK)])
    r = await api.put(f"/api/v1/integrations/{iid}", json=body, headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert [h["value"] for h in r.json()["config"]["headers"]] == [MASK, MASK]
    sent = await sent_by_test_call(api, section, fresh_provider, iid)
    assert sent.headers["x-a"] == A_SECRET and sent.headers["x-b"] == B_SECRET
    assert sent.headers["authorization"] == basic(PASSWORD)


async def test_removing_a_secret_header_does_not_pass_its_secret_on(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """Removing the first secret header leaves the next one its own secret and sends the removed one nowhere."""
    iid = await create_ab(api, section, fresh_provider)
    r = await api.put(f"/api/v1/integrations/{iid}", json=masked(fresh_provider, [header("X-B", MASK)]),
                      headers=section.mgmt)  # fmt: skip
    assert r.status_code == 200, r.text
    sent = await sent_by_test_call(api, section, fresh_provider, iid)
    assert sent.headers["x-b"] == B_SECRET and "x-a" not in sent.headers
    assert A_SECRET not in str(sent.headers)


async def test_a_header_name_given_twice_is_422(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """`X-A` and `x-a` are one header name: both would be sent, and an edit could not tell which
    stored secret a mask means. Refused, naming the headers; nothing saved."""
    body = integration(fresh_provider, [header("X-A", A_SECRET), header("x-a", B_SECRET)])
    r = await api.post("/api/v1/integrations", json=body, headers=section.mgmt)
    assert r.status_code == 422 and "header 'x-a' is given twice" in r.text, r.text
    assert r.json()["detail"][0]["loc"][:3] == ["body", "config", "headers"], r.text
    assert A_SECRET not in r.text and B_SECRET not in r.text
    assert (await api.get("/api/v1/integrations", headers=section.mgmt)).json() == []
    # One saved before the rule still reads for sending (the rule is the save model's only).
    stored = {"url": "https://esp.example/send", "headers": body["config"]["headers"]}
    assert len(CustomHttpConfig.model_validate(stored).headers) == 2


async def test_mask_for_a_header_with_no_stored_secret_is_422(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """A masked value for a header name that has no stored secret (even at a position that has
    one) is a 422 naming that header's value, and the stored integration is left as it was."""
    iid = await create_ab(api, section, fresh_provider)
    body = masked(fresh_provider, [header("X-C", MASK), header("X-A", MASK)])
    r = await api.put(f"/api/v1/integrations/{iid}", json=body, headers=section.mgmt)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "config", "headers", 0, "value"]
    sent = await sent_by_test_call(api, section, fresh_provider, iid)
    assert sent.headers["x-a"] == A_SECRET and sent.headers["x-b"] == B_SECRET and "x-c" not in sent.headers


@pytest.mark.parametrize(
    "headers",
    [[header("X-A", MASK, secret=False), header("X-B", MASK)], {"X-A": MASK}],
    ids=["secret-false", "shorthand"],
)
async def test_mask_on_a_non_secret_header_is_422_and_never_sent(
    api: httpx.AsyncClient,
    section: SectionKeys,
    fresh_provider: ProviderServer,
    headers: list[dict[str, Any]] | dict[str, str],
) -> None:
    """A mask on a header not marked secret (whose name has a stored secret) is refused with the
    field named, neither sent to the vendor as the literal mask nor un-masking the stored secret;
    a new integration with such a header is refused too."""
    iid = await create_ab(api, section, fresh_provider)
    r = await api.put(f"/api/v1/integrations/{iid}", json=masked(fresh_provider, headers), headers=section.mgmt)
    assert r.status_code == 422, r.text
    at: list[str | int] = [0, "value"] if isinstance(headers, list) else ["X-A"]
    loc = ["body", "config", "headers", *at]
    assert r.json()["detail"][0]["loc"] == loc and A_SECRET not in r.text
    got = await api.get(f"/api/v1/integrations/{iid}", headers=section.mgmt)
    assert A_SECRET not in got.text
    sent = await sent_by_test_call(api, section, fresh_provider, iid)
    assert sent.headers["x-a"] == A_SECRET
    plain_only = headers[:1] if isinstance(headers, list) else headers  # no masked secret: nothing stored yet
    r = await api.post("/api/v1/integrations", json=integration(fresh_provider, plain_only) | {"channel": "sms"},
                       headers=section.mgmt)  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text
    assert all(h.get("x-a") != MASK for h in (req.headers for req in fresh_provider.requests))


# ------------------------------------------------------------------ B. 422s echo nothing


@pytest.mark.parametrize(
    ("path", "keys", "body", "secret", "status"),
    [
        ("/api/v1/integrations", "mgmt",
         {"channel": "email", "kind": "custom_http", "config": {
             "url": "https://esp.example/send", "auth": {"type": "basic", "username": "u", "password": PASSWORD}}},
         PASSWORD, 422),
        ("/v2/collect/user/event", "ing",
         {"user": {"dyid": "1", "email": "jane.doe@example.com"}, "events": "jane.doe@example.com"},
         "jane.doe", 422),
        ("/v2/collect/user/event", "ing", '{"user": {"dyid": "1", "email": "jane.doe@example.com"} "events": []}',
         "jane.doe", 400),
        ("/v2/userdata/channels/email/opt-in", "ing", {"identifier": "jane.doe@example.com"}, "jane.doe", 422),
    ],
    ids=["missing-name", "wrong-type", "bad-json", "opt-in"],
)  # fmt: skip
async def test_validation_errors_echo_nothing_of_the_request(
    api: httpx.AsyncClient, section: SectionKeys, path: str, keys: str, body: dict[str, Any] | str, secret: str,
    status: int,
) -> None:  # fmt: skip
    """A request the models refuse gets a 422 (400 for a body that is no JSON: the Experience API's
    request parse error) whose items are only `type`, `loc` and `msg`: no `input` (the body, with
    its secrets or the shopper's address) and no `ctx`."""
    headers = section.mgmt if keys == "mgmt" else section.ing
    if isinstance(body, str):
        r = await api.post(path, content=body, headers=headers | {"content-type": "application/json"})
    else:
        r = await api.post(path, json=body, headers=headers)
    assert r.status_code == status, r.text
    assert secret not in r.text
    detail = r.json()["detail"]
    assert detail and all(set(item) == {"type", "loc", "msg"} for item in detail), r.text
    assert all(item["loc"][0] == "body" for item in detail)


# ------------------------------------------------------------------ C. test call timeout


@pytest.fixture
async def quick_api(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a 1 s delivery attempt: provider calls then time out after 0.8 s."""
    quick = Settings(data_dir=settings.data_dir, database_url=settings.effective_database_url,
                     admin_key="test-admin-key", secret_key=",".join(settings.secret_keys), allow_private_urls=True,
                     delivery_timeout=timedelta(seconds=1))  # fmt: skip
    app = create_app(quick, store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as client:
        yield client


async def test_test_call_times_out_when_deliveries_would(
    quick_api: httpx.AsyncClient, fresh_provider: ProviderServer
) -> None:
    """The test call waits for the provider as long as deliveries do (`provider_call_timeouts`),
    so an answer slower than that is ok:false with an error saying it timed out, where a longer
    test-call limit reported ok:true for a provider every real send times out on; a quick answer
    is still ok:true."""
    read, _ = provider_call_timeouts(timedelta(seconds=1))
    assert read == pytest.approx(0.8)
    sec = await make_section(quick_api, "quick")
    r = await quick_api.post("/api/v1/integrations", json=integration(fresh_provider, []), headers=sec.mgmt)
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    fresh_provider.script("/send", Reply(200, {"ok": True}, delay=read + 0.7))
    r = await quick_api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {}}, headers=sec.mgmt)
    out = r.json()
    assert r.status_code == 200 and out["ok"] is False and out["status"] is None, r.text
    assert out["error"].startswith("timeout") and f"{read:g} s" in out["error"] and "retried" in out["error"]
    fresh_provider.script("/send", Reply(200, {"ok": True}, delay=0.1))
    r = await quick_api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {}}, headers=sec.mgmt)
    assert r.json()["ok"] is True, r.text


async def test_a_body_not_sent_as_json_is_told_so(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """A JSON body sent as text/plain is a 400 (a body the API cannot read as JSON: the Experience
    API's request parse error; it was a 422) saying to send it as JSON, where pydantic's message
    ("Input should be a valid dictionary") left the sender guessing; management and ingestion alike."""
    body = json.dumps({"user": {"dyid": "1"}, "events": []})
    for path, keys in (("/api/v1/integrations", section.mgmt), ("/v2/collect/user/event", section.ing)):
        r = await api.post(path, content=body, headers={**keys, "content-type": "text/plain"})
        assert r.status_code == 400, r.text
        assert r.json()["detail"][0]["msg"] == (
            "the body was sent as text/plain; send JSON with Content-Type: application/json"
        ), r.text
        r = await api.post(path, content=body, headers=keys)  # no content type at all
        assert r.status_code == 400, r.text
        assert r.json()["detail"][0]["msg"].startswith("the body was sent without a Content-Type; send JSON"), r.text


async def test_the_schema_documents_validation_errors_as_sent(api: httpx.AsyncClient) -> None:
    """The OpenAPI ValidationError lists what a 422 carries (type, loc, msg), not FastAPI's `input`
    and `ctx`, which are never sent."""
    schema = (await api.get("/openapi.json")).json()
    assert set(schema["components"]["schemas"]["ValidationError"]["properties"]) == {"type", "loc", "msg"}
