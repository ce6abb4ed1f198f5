"""Fixes from a trial against fakes of the real vendors: FCM's THIRD_PARTY_AUTH_ERROR is not our
token being refused, an SMS without text is a configuration error, a gone push subscription falls
back to the user's next live one on the same channel, and FCM's own data-key and size rules."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from providers.base import ConfigurationError
from providers.registry import ProviderRegistry
from store.engine import Store
from store.tables import Send
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    new_dyid,
    step,
)
from tests.provider_server import ProviderServer, Received, Reply
from tests.providers.test_presets import jwt_token_endpoint
from tests.providers.test_push_fixes_fcm import FCM_ERROR, SCOPE, SEND, fcm_config, push_shopper
from tests.providers.test_web_push_identity import Browser, _optin, _rows, _user_id, _web_push_campaign
from tests.providers.util import message


def _endpoint_hash(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()


THIRD_PARTY = {"error": {"code": 401, "status": "UNAUTHENTICATED",
                         "message": "Auth error from APNS or Web Push Service",
                         "details": [{"@type": FCM_ERROR, "errorCode": "THIRD_PARTY_AUTH_ERROR"}]}}  # fmt: skip


async def test_fcm_third_party_auth_error_fails_once_without_a_new_token(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """The project's APNs / web push credentials are bad: our access token is fine, so the send fails
    for good after one call (no second token fetch, no resend) with FCM's code in the reason."""
    claims = jwt_token_endpoint(fresh_provider, SCOPE)
    fresh_provider.default(SEND, Reply(401, THIRD_PARTY))
    await add_integration(api, section, "app_push", kind="fcm", identifier_type="custom",
                          config=fcm_config(fresh_provider))  # fmt: skip
    fetched_on_save = len(claims)
    spec = cart_campaign(wait="PT1H", channel_priority=["app_push"], steps=[step("Nudge", channels=("app_push",))])
    cid = await create_campaign(api, section, spec)
    uid, _ = await push_shopper(api, section, "sku-3p")
    result = await journey_result(env.client, section, cid, uid)
    (failed,) = [d for d in result.decisions if d.outcome in ("sent", "failed")]
    assert failed.outcome == "failed" and "THIRD_PARTY_AUTH_ERROR" in (failed.reason or ""), result
    assert len(fresh_provider.to(SEND)) == 1
    assert len(claims) - fetched_on_save <= 1  # at most the worker's first token, never a refetch


async def test_fcm_a_refused_access_token_is_still_refetched_once(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """A plain 401 UNAUTHENTICATED (our token expired or was revoked) keeps its one refetch and resend."""
    claims = jwt_token_endpoint(fresh_provider, SCOPE)
    expired = {
        "error": {
            "code": 401,
            "status": "UNAUTHENTICATED",
            "message": "Request had invalid authentication credentials.",
        }
    }
    fresh_provider.script(SEND, Reply(401, expired), Reply(200, {"name": "projects/demo-project/messages/1"}))
    push = message(
        fcm_config(fresh_provider), {"title": "t"}, channel="app_push", recipient="tok", integration_id="int_r"
    )
    resp = await registry.for_kind("fcm").send(push)
    assert resp.message_id == "projects/demo-project/messages/1"
    assert len(claims) == 2 and len(fresh_provider.to(SEND)) == 2


TWILIO_PATH = "/2010-04-01/Accounts/AC0123456789abcdef/Messages.json"


def twilio_config(server: ProviderServer) -> dict[str, Any]:
    return {"account_sid": "AC0123456789abcdef", "auth_token": "tw-token", "sender": "Shop", "base_url": server.url()}


async def test_an_sms_without_text_is_a_configuration_error_without_a_call(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """No body/Body/text: the payload's raw JSON used to go out as the SMS; now nothing is sent."""
    fresh_provider.default(TWILIO_PATH, Reply(201, {"sid": "SM1", "status": "queued"}))
    for payload in ({"message": "hi"}, {"body": ""}, {"body": {"x": 1}}):
        sms = message(twilio_config(fresh_provider), payload, channel="sms", recipient="+15551234567")
        with pytest.raises(ConfigurationError, match="no text.*'body'"):
            await registry.for_kind("twilio").send(sms)
    assert fresh_provider.requests == []
    for key in ("body", "Body", "text"):
        sms = message(twilio_config(fresh_provider), {key: "Back in stock"}, channel="sms", recipient="+15551234567")
        assert (await registry.for_kind("twilio").send(sms)).message_id == "SM1"


async def test_the_integration_test_call_refuses_an_sms_without_text(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    fresh_provider.default(TWILIO_PATH, Reply(201, {"sid": "SM1", "status": "queued"}))
    integration = await add_integration(api, section, "sms", kind="twilio", config=twilio_config(fresh_provider))
    r = await api.post(f"/api/v1/integrations/{integration['id']}/test", headers=section.mgmt,
                       json={"payload": {"message": "hi"}, "recipient": "+15551234567"})  # fmt: skip
    assert r.status_code == 200 and r.json()["ok"] is False and "no text" in r.json()["error"], r.text
    assert fresh_provider.requests == []


async def test_a_gone_push_subscription_falls_back_to_the_users_older_live_one(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """Two web push subscriptions, the newer one 410 Gone: it is opted out and the same step goes to
    the older live one on the same channel (one send, delivered once), not to another channel."""
    campaign = await _web_push_campaign(api, section)
    dyid = new_dyid()
    old, new = Browser(fresh_provider.url("/push/old")), Browser(fresh_provider.url("/push/new"))
    fresh_provider.default("/push/old", Reply(201, ""))
    fresh_provider.default("/push/new", Reply(410, "push subscription has unsubscribed or expired"))
    await collect(api, section, dyid, _optin(old.as_browser_sends_it()))
    await collect(api, section, dyid, _optin(new.as_browser_sends_it()))
    uid = await _user_id(api, section, dyid)
    await collect(api, section, dyid, add_to_cart("sku-two-subs"))
    result = await journey_result(env.client, section, campaign, uid)
    assert [(d.outcome, d.channel) for d in result.decisions if d.outcome in ("sent", "failed")] == [
        ("sent", "web_push")
    ], result
    assert len(fresh_provider.to("/push/new")) == 1 and len(fresh_provider.to("/push/old")) == 1
    assert old.decrypt(fresh_provider.to("/push/old")[0].body)["title"] == "Back?"
    by_endpoint = {r.value_hash: r for r in _rows(store, section)}
    assert not by_endpoint[_endpoint_hash(new.endpoint)].opted_in
    assert by_endpoint[_endpoint_hash(new.endpoint)].source == "provider"
    assert by_endpoint[_endpoint_hash(old.endpoint)].opted_in
    with store.session() as s:
        (send,) = s.exec(select(Send).where(Send.campaign_id == campaign, Send.user_id == uid)).all()
        assert send.status == "accepted" and not send.possible_duplicate


async def test_every_subscription_gone_fails_the_step_as_before(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """Both subscriptions gone: both are tried once, both opted out, and the step fails (fallback)."""
    campaign = await _web_push_campaign(api, section)
    dyid = new_dyid()
    first, second = Browser(fresh_provider.url("/push/a")), Browser(fresh_provider.url("/push/b"))
    for path in ("/push/a", "/push/b"):
        fresh_provider.default(path, Reply(410, "gone"))
    await collect(api, section, dyid, _optin(first.as_browser_sends_it()))
    await collect(api, section, dyid, _optin(second.as_browser_sends_it()))
    uid = await _user_id(api, section, dyid)
    await collect(api, section, dyid, add_to_cart("sku-all-gone"))
    result = await journey_result(env.client, section, campaign, uid)
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["failed"], result
    assert len(fresh_provider.to("/push/a")) == 1 and len(fresh_provider.to("/push/b")) == 1
    assert not any(r.opted_in for r in _rows(store, section))


async def test_an_unregistered_app_token_falls_back_to_the_users_other_device(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """App push with two devices: the newest token UNREGISTERED, the step goes to the older device."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    unregistered = {"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
                              "details": [{"@type": FCM_ERROR, "errorCode": "UNREGISTERED"}]}}  # fmt: skip

    def answer(req: Received) -> Reply:
        token = req.json()["message"]["token"]
        return Reply(404, unregistered) if token == "fcm-new" else Reply(200, {"name": f"projects/p/messages/{token}"})

    fresh_provider.handler(SEND, answer)
    await add_integration(api, section, "app_push", kind="fcm", identifier_type="custom",
                          config=fcm_config(fresh_provider))  # fmt: skip
    spec = cart_campaign(wait="PT1H", channel_priority=["app_push"], steps=[step("Nudge", channels=("app_push",))])
    cid = await create_campaign(api, section, spec)
    dyid = new_dyid()
    for token in ("fcm-old", "fcm-new"):
        await collect(api, section, dyid, {"name": "Push opt-in", "properties": {
            "dyType": "message-optin-v1", "channelType": "APP_PUSH", "pushID": token}})  # fmt: skip
    await collect(api, section, dyid, add_to_cart("sku-devices"))
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    result = await journey_result(env.client, section, cid, str(r.json()["id"]))
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["sent"], result
    assert [q.json()["message"]["token"] for q in fresh_provider.to(SEND)] == ["fcm-new", "fcm-old"]


async def test_fcm_reserved_data_keys_and_oversized_messages_fail_without_a_call(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """FCM answers 400 to these every time: a permanent failure with the reason, before any call."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    fresh_provider.default(SEND, Reply(200, {"name": "projects/demo-project/messages/1"}))
    fcm = registry.for_kind("fcm")
    for key in ("from", "message_type", "collapse_key", "google.c.a.e", "gcm.notification.x", "googleKey"):
        push = message(
            fcm_config(fresh_provider), {"title": "t", "data": {key: "1"}}, channel="app_push", recipient="tok"
        )
        with pytest.raises(ConfigurationError, match=f"reserves the data key '{key}'"):
            await fcm.send(push)
    big = message(fcm_config(fresh_provider), {"title": "t", "body": "é" * 2100}, channel="app_push", recipient="tok")
    with pytest.raises(ConfigurationError, match=r"\d+ bytes; FCM accepts at most 4096"):
        await fcm.send(big)
    assert fresh_provider.to(SEND) == []
    fine = {"title": "t", "body": "x" * 3900, "data": {"fromage": "brie", "sku": "1"}}
    assert (await fcm.send(message(fcm_config(fresh_provider), fine, channel="app_push", recipient="tok"))).message_id
    assert len(fresh_provider.to(SEND)) == 1
