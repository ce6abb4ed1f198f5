"""FCM fixes: only FCM's own "token is dead" answers opt a token out, a project id is required on save,
and the push tracking token reaches the app (as `data.rjt`) so its clicks can be reported."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from providers.base import ConfigurationError, ProviderError
from providers.registry import ProviderRegistry
from store.engine import Store
from store.tables import OptIn
from tests.helpers import SectionKeys, add_integration, add_to_cart, cart_campaign, collect, create_campaign
from tests.helpers import journey_result, new_dyid, step
from tests.provider_server import ProviderServer, Reply
from tests.providers.keys import service_account
from tests.providers.test_presets import jwt_token_endpoint
from tests.providers.util import message

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
SEND = "/v1/projects/demo-project/messages:send"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def fcm_config(server: ProviderServer, **account: Any) -> dict[str, Any]:
    return {"service_account": service_account(server.url("/token")) | account, "base_url": server.url()}


async def send_error(registry: ProviderRegistry, server: ProviderServer, reply: Reply) -> ProviderError:
    server.script(SEND, reply)
    push = message(fcm_config(server), {"title": "t"}, channel="app_push", recipient="tok", integration_id="int_f")
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("fcm").send(push)
    return err.value


async def test_a_404_without_unregistered_keeps_the_token(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """A wrong project or URL answers 404 NOT_FOUND (or a proxy's HTML page): the token may be fine."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    not_found = {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}
    for reply in (Reply(404, not_found), Reply(404, "<html><title>Error 404 (Not Found)!!1</title></html>")):
        err = await send_error(registry, fresh_provider, reply)
        assert not err.retryable and not err.recipient_gone, reply


async def test_fcm_dead_token_answers_as_google_sends_them(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """UNREGISTERED in the FcmError detail, and a 400 INVALID_ARGUMENT about the token, opt out;
    an INVALID_ARGUMENT about the message does not."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    unregistered = {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                              "details": [{"@type": FCM_ERROR, "errorCode": "UNREGISTERED"}]}}  # fmt: skip
    bad_token = {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                           "message": "The registration token is not a valid FCM registration token",
                           "details": [{"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"}]}}  # fmt: skip
    token_field = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid argument.",
                             "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                                          "fieldViolations": [{"field": "message.token"}]}]}}  # fmt: skip
    bad_message = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid value at 'message.data'",
                             "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                                          "fieldViolations": [{"field": "message.data[0].value"}]}]}}  # fmt: skip
    other_unregistered_type = {"error": {"code": 404, "status": "NOT_FOUND",
                                         "details": [{"@type": "type.googleapis.com/other.Error",
                                                      "errorCode": "UNREGISTERED"}]}}  # fmt: skip
    cases = [(Reply(404, unregistered), True), (Reply(400, bad_token), True), (Reply(400, token_field), True),
             (Reply(400, bad_message), False), (Reply(404, other_unregistered_type), False)]  # fmt: skip
    for reply, gone in cases:
        err = await send_error(registry, fresh_provider, reply)
        assert err.recipient_gone is gone, reply


async def test_a_404_not_found_in_a_journey_keeps_the_opt_in(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """End to end: a project id the FCM API does not know fails the step, and the device stays opted in."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    fresh_provider.default(SEND, Reply(404, {"error": {"code": 404, "status": "NOT_FOUND",
                                                       "message": "Requested entity was not found."}}))  # fmt: skip
    await add_integration(api, section, "app_push", kind="fcm", identifier_type="custom",
                          config=fcm_config(fresh_provider))  # fmt: skip
    spec = cart_campaign(wait="PT1H", channel_priority=["app_push"], steps=[step("Nudge", channels=("app_push",))])
    cid = await create_campaign(api, section, spec)
    uid, _ = await push_shopper(api, section, "sku-404")
    result = await journey_result(env.client, section, cid, uid)
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["failed"], result
    with store.session() as s:
        row = s.exec(select(OptIn).where(OptIn.section_id == section.id, OptIn.channel == "app_push")).one()
        assert row.opted_in and row.source != "provider"


async def push_shopper(api: httpx.AsyncClient, sec: SectionKeys, sku: str) -> tuple[str, str]:
    """A shopper whose app registered an FCM token, abandoning a cart: (user id, dyid)."""
    dyid = new_dyid()
    optin = {"name": "Push opt-in", "properties": {"dyType": "message-optin-v1", "channelType": "APP_PUSH",
                                                   "pushID": "fcm-" + secrets.token_hex(8)}}  # fmt: skip
    await collect(api, sec, dyid, optin, add_to_cart(sku))
    r = await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"]), dyid


async def test_fcm_without_a_project_id_is_refused_on_save(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """No project_id in config nor in the file: a 422 naming config.project_id (it would send to
    /v1/projects//messages:send), as is one that is not a project id; one given in config is saved."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    account = service_account(fresh_provider.url("/token"))
    del account["project_id"]
    config: dict[str, Any] = {"service_account": account, "base_url": fresh_provider.url()}
    for project in (None, "../../x"):
        body = {"channel": "app_push", "name": "FCM", "kind": "fcm", "identifier_type": "custom",
                "config": config | ({"project_id": project} if project else {})}  # fmt: skip
        r = await api.post("/api/v1/integrations", json=body, headers=section.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "project_id"], r.text
    body["config"] = config | {"project_id": "demo-project"}
    r = await api.post("/api/v1/integrations", json=body, headers=section.mgmt)
    assert r.status_code == 201, r.text


async def test_a_stored_config_without_project_fails_without_calling(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """An integration saved before the rule: the send is a configuration failure, not a call to a bad URL."""
    cfg = fcm_config(fresh_provider)
    del cfg["service_account"]["project_id"]
    with pytest.raises(ConfigurationError, match="project_id"):
        await registry.for_kind("fcm").send(message(cfg, {"title": "t"}, channel="app_push", recipient="tok"))
    assert fresh_provider.requests == []


async def test_fcm_push_carries_the_tracking_token_the_app_reports(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """`trackingData` reaches the device as data.rjt (FCM data is a string map); the app echoes
    {"rjt": data.rjt} to the engagement endpoint and the click is recorded."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    fresh_provider.default(SEND, Reply(200, {"name": "projects/demo-project/messages/1"}))
    await add_integration(api, section, "app_push", kind="fcm", identifier_type="custom",
                          config=fcm_config(fresh_provider))  # fmt: skip
    payload = {"title": "Forgot something?", "data": {"sku": "${Items in cart|sku|item1}"},
               "trackingData": "${Push tracking data}"}  # fmt: skip
    spec = cart_campaign(wait="PT1H", channel_priority=["app_push"],
                         steps=[step("Nudge", channels=("app_push",), payload=payload)])  # fmt: skip
    cid = await create_campaign(api, section, spec)
    uid, dyid = await push_shopper(api, section, "sku-fcm")
    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    (sent,) = fresh_provider.to(SEND)
    fcm = sent.json()["message"]
    assert "trackingData" not in fcm and fcm["data"]["sku"] == "sku-fcm"
    assert all(isinstance(v, str) for v in fcm["data"].values())
    rjt = fcm["data"]["rjt"]
    r = await api.post("/v2/collect/user/engagement", headers=section.ing, json={
        "user": {"dyid": dyid}, "engagements": [{"type": "PN_CLICK", "trackingData": {"rjt": rjt}}]})  # fmt: skip
    assert r.status_code == 202 and r.json() == {"recorded": 1, "ignored": 0, "warnings": []}, r.text
