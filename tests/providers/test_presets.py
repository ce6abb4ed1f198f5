"""Vendor presets against the local provider server: method, path, auth, headers and body per vendor."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, unquote

import httpx
import jwt
import pytest

from providers.base import ConfigurationError, ProviderError
from providers.registry import ProviderRegistry
from store.engine import Store
from tests.provider_server import ProviderServer, Received, Reply
from tests.providers.h2_server import h2_server
from tests.providers.keys import ec_key, pem, rsa_key, service_account
from tests.providers.util import message

CART = {"firstName": "Jane", "items": [{"sku": "2264", "price": 330}]}


def form(req: Received) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(req.body.decode()).items()}


def jwt_token_endpoint(server: ProviderServer, scope: str, path: str = "/token") -> list[dict[str, object]]:
    """A Google-style token endpoint verifying the RS256 service-account assertion; returns verified claims."""
    seen: list[dict[str, object]] = []

    def handle(req: Received) -> Reply:
        f = form(req)
        if f.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return Reply(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(f["assertion"], rsa_key().public_key(), algorithms=["RS256"], audience=server.url(path))
        except jwt.InvalidTokenError:
            return Reply(400, {"error": "invalid_grant"})
        assert jwt.get_unverified_header(f["assertion"])["kid"] == "kid-1"
        if claims["scope"] != scope or claims["iss"] != "rejoin@demo-project.iam.gserviceaccount.com":
            return Reply(400, {"error": "invalid_scope"})
        seen.append(claims)
        return Reply(200, {"access_token": f"ya29.tok{len(seen)}", "expires_in": 3599, "token_type": "Bearer"})

    server.handler(path, handle)
    return seen


async def test_sendgrid_mail_send(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """SendGrid: Bearer key, personalizations with dynamic template data, send key in custom_args."""
    fresh_provider.default("/v3/mail/send", Reply(202, "", headers={"X-Message-Id": "sg-1"}))
    cfg = {"api_key": "SG.key", "from_email": "shop@example.com", "from_name": "Shop", "template_id": "d-abc",
           "base_url": fresh_provider.url()}  # fmt: skip
    resp = await registry.for_kind("sendgrid").send(message(cfg, CART, key="snd_1"))
    req = fresh_provider.to("/v3/mail/send")[0]
    assert req.method == "POST" and req.headers["authorization"] == "Bearer SG.key"
    assert req.json() == {
        "personalizations": [{"to": [{"email": "jane@example.com"}], "dynamic_template_data": CART,
                              "custom_args": {"rejoin_send_key": "snd_1"}}],
        "from": {"email": "shop@example.com", "name": "Shop"},
        "template_id": "d-abc",
    }  # fmt: skip
    assert resp.message_id == "sg-1"


async def test_iterable_email_target(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """Iterable: Api-Key header, campaignId + recipientEmail + dataFields; a non-Success code is a rejection."""
    fresh_provider.default("/api/email/target", Reply(200, {"msg": "", "code": "Success", "params": None}))
    cfg = {"api_key": "it-key", "campaign_id": 10732344, "base_url": fresh_provider.url()}
    await registry.for_kind("iterable").send(message(cfg, CART, key="snd_2"))
    req = fresh_provider.to("/api/email/target")[0]
    assert req.headers["api-key"] == "it-key"
    assert req.json() == {"campaignId": 10732344, "recipientEmail": "jane@example.com", "dataFields": CART,
                          "metadata": {"rejoin_send_key": "snd_2"}}  # fmt: skip
    fresh_provider.script("/api/email/target", Reply(200, {"msg": "no campaign", "code": "BadParams"}))
    with pytest.raises(ProviderError, match="BadParams") as err:
        await registry.for_kind("iterable").send(message(cfg, CART))
    assert not err.value.retryable


async def test_klaviyo_event_uses_send_key_as_unique_id(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """Klaviyo: Klaviyo-API-Key + revision headers, JSON:API event, unique_id = the idempotency key."""
    fresh_provider.default("/api/events", Reply(202, ""))
    cfg = {"api_key": "pk_123", "metric_name": "Rejoin Cart", "base_url": fresh_provider.url()}
    await registry.for_kind("klaviyo").send(message(cfg, CART, key="snd_3"))
    req = fresh_provider.to("/api/events")[0]
    assert req.headers["authorization"] == "Klaviyo-API-Key pk_123" and req.headers["revision"] == "2024-10-15"
    assert req.headers["content-type"] == "application/vnd.api+json"
    attrs = req.json()["data"]["attributes"]
    assert req.json()["data"]["type"] == "event" and attrs["unique_id"] == "snd_3"
    assert attrs["metric"]["data"]["attributes"]["name"] == "Rejoin Cart"
    assert attrs["profile"]["data"]["attributes"] == {"email": "jane@example.com"}
    assert attrs["properties"]["items"] == CART["items"] and attrs["properties"]["campaign"] == "Cart Reminder"
    assert registry.for_kind("klaviyo").honours_idempotency_key


async def test_twilio_form_encoded_basic_auth(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """Twilio: form-encoded Messages.json with Basic SID:token; an invalid number (400) is permanent."""
    path = "/2010-04-01/Accounts/AC0123456789abcdef/Messages.json"
    fresh_provider.script(path, Reply(201, {"sid": "SM42", "status": "queued"}),
                          Reply(400, {"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}))  # fmt: skip
    cfg = {"account_sid": "AC0123456789abcdef", "auth_token": "tw-token", "sender": "Shop",
           "base_url": fresh_provider.url()}  # fmt: skip
    sms = message(cfg, {"body": "Your cart is waiting"}, channel="sms", recipient="+15551234567")
    resp = await registry.for_kind("twilio").send(sms)
    req = fresh_provider.to(path)[0]
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.headers["authorization"] == "Basic " + base64.b64encode(b"AC0123456789abcdef:tw-token").decode()
    assert form(req) == {"To": "+15551234567", "From": "Shop", "Body": "Your cart is waiting"}
    assert resp.message_id == "SM42"
    with pytest.raises(ProviderError, match="21211") as err:
        await registry.for_kind("twilio").send(sms)
    assert not err.value.retryable and err.value.status == 400


async def test_responsys_token_login_and_campaign_in_path(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """Responsys: one password login, raw token in Authorization, campaign name in the URL path."""
    logins: list[Received] = []

    def login(req: Received) -> Reply:
        logins.append(req)
        ok = form(req) == {"user_name": "api", "password": "rs-pass", "auth_type": "password"}
        if not ok:
            return Reply(401, {"errorCode": "INVALID_USER_NAME_PASSWORD", "title": "Authentication failed"})
        return Reply(200, {"authToken": "rs-token", "issuedAt": 1, "endPoint": fresh_provider.url().rstrip("/")})

    fresh_provider.handler("/rest/api/v1.3/auth/token", login)
    send_path = "/rest/api/v1.3/campaigns/Cart%20Reminder/email"
    fresh_provider.default(send_path, Reply(200, [{"errorMessage": None, "success": True, "recipientId": 77}]))
    cfg = {"login_url": fresh_provider.url(), "username": "api", "password": "rs-pass"}
    adapter = registry.for_kind("responsys")
    resp = await adapter.send(message(cfg, {"FIRST_NAME": "Jane", "ITEMS": 2}, integration_id="int_rs"))
    await adapter.send(message(cfg, {"FIRST_NAME": "Jo"}, integration_id="int_rs"))
    reqs = [r for r in fresh_provider.requests if r.path.startswith("/rest/api/v1.3/campaigns/")]
    assert len(logins) == 1 and len(reqs) == 2 and unquote(reqs[0].path).endswith("/Cart Reminder/email")
    assert reqs[0].headers["authorization"] == "rs-token"
    assert reqs[0].json() == {"recipientData": [{
        "recipient": {"emailAddress": "jane@example.com", "emailFormat": "HTML_FORMAT"},
        "optionalData": [{"name": "FIRST_NAME", "value": "Jane"}, {"name": "ITEMS", "value": "2"}]}]}  # fmt: skip
    assert resp.message_id == "77"
    fresh_provider.script(send_path, Reply(200, [{"errorMessage": "RECIPIENT_STATUS_UNDELIVERABLE", "success": False,
                                                  "recipientId": -1}]))  # fmt: skip
    with pytest.raises(ProviderError, match="UNDELIVERABLE"):
        await adapter.send(message(cfg, {}, integration_id="int_rs"))
    with pytest.raises(ConfigurationError, match="INVALID_USER_NAME_PASSWORD"):
        await adapter.validate(cfg | {"password": "nope"})  # type: ignore[attr-defined]


async def test_emarsys_service_account_trigger(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """Emarsys: service-account JWT minted into a Bearer token; trigger_id = send key; replyCode checked."""
    claims = jwt_token_endpoint(fresh_provider, "https://api.emarsys.net/api/v3")
    path = "/api/v3/event/42/trigger"
    fresh_provider.default(path, Reply(200, {"replyCode": 0, "replyText": "OK", "data": {}}))
    cfg = {"service_account": service_account(fresh_provider.url("/token")), "event_id": "42",
           "base_url": fresh_provider.url()}  # fmt: skip
    adapter = registry.for_kind("emarsys")
    await adapter.send(message(cfg, CART, key="snd_e1", integration_id="int_em"))
    await adapter.send(message(cfg, CART, key="snd_e2", integration_id="int_em"))
    assert len(claims) == 1
    req = fresh_provider.to(path)[0]
    assert req.headers["authorization"] == "Bearer ya29.tok1"
    assert req.json() == {"key_id": "3", "external_id": "jane@example.com", "trigger_id": "snd_e1", "data": CART}
    assert adapter.honours_idempotency_key


async def test_fcm_v1_token_minting_and_message(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """FCM HTTP v1: token minted once from the service account, message to the device token, data stringified."""
    claims = jwt_token_endpoint(fresh_provider, "https://www.googleapis.com/auth/firebase.messaging")
    path = "/v1/projects/demo-project/messages:send"
    fresh_provider.default(path, Reply(200, {"name": "projects/demo-project/messages/0:123"}))
    fresh_provider.script(path, Reply(200, {"name": "projects/demo-project/messages/0:123"}),
                          Reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}))  # fmt: skip
    cfg = {"service_account": service_account(fresh_provider.url("/token")), "base_url": fresh_provider.url()}
    payload = {"title": "Still thinking?", "body": "Your cart misses you", "data": {"sku": "2264", "qty": 2}}
    adapter = registry.for_kind("fcm")
    resp = await adapter.send(message(cfg, payload, channel="app_push", recipient="dev-token-1", integration_id="int_f"))
    await adapter.send(message(cfg, payload, channel="app_push", recipient="dev-token-1", integration_id="int_f"))
    reqs = fresh_provider.to(path)
    assert reqs[0].json() == {"message": {"token": "dev-token-1", "data": {"sku": "2264", "qty": "2"},
                                          "notification": {"title": "Still thinking?", "body": "Your cart misses you"}}}  # fmt: skip
    assert resp.message_id == "projects/demo-project/messages/0:123"
    # second send: 401 -> one refetch, one retry with the new token
    assert len(claims) == 2 and [r.headers["authorization"] for r in reqs] == ["Bearer ya29.tok1"] * 2 + ["Bearer ya29.tok2"]


async def test_apns_es256_provider_token(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """APNs: ES256 JWT (kid, iss), apns-topic/push-type/priority, stable apns-id; 410 Unregistered is permanent.

    Over plain HTTP the local server speaks HTTP/1.1; against Apple the HTTP/2 client negotiates h2 via ALPN.
    """
    path = "/3/device/abcdef0123"
    fresh_provider.script(path, Reply(200, "", headers={"apns-id": "echo"}),
                          Reply(410, {"reason": "Unregistered", "timestamp": 1}))  # fmt: skip
    cfg = {"team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": pem(ec_key()), "topic": "com.shop.app",
           "base_url": fresh_provider.url()}  # fmt: skip
    push = message(cfg, {"title": "Hi", "body": "Cart", "deep_link": "shop://cart"}, channel="app_push",
                   recipient="abcdef0123", key="snd_a")  # fmt: skip
    resp = await registry.for_kind("apns").send(push)
    req = fresh_provider.to(path)[0]
    scheme, _, token = req.headers["authorization"].partition(" ")
    assert scheme == "bearer"
    assert jwt.decode(token, ec_key().public_key(), algorithms=["ES256"])["iss"] == "TEAM123456"
    assert jwt.get_unverified_header(token)["kid"] == "KEY1234567"
    assert req.headers["apns-topic"] == "com.shop.app" and req.headers["apns-push-type"] == "alert"
    assert req.headers["apns-priority"] == "10"
    assert req.json() == {"aps": {"alert": {"title": "Hi", "body": "Cart"}}, "deep_link": "shop://cart"}
    assert resp.message_id == "echo"
    with pytest.raises(ProviderError, match="Unregistered") as err:
        await registry.for_kind("apns").send(push)
    assert not err.value.retryable and err.value.recipient_gone
    assert fresh_provider.to(path)[1].headers["apns-id"] == req.headers["apns-id"]


async def test_push_adapters_tell_a_dead_token_from_a_bad_message(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """FCM 404 UNREGISTERED / 400 naming the token and APNs BadDeviceToken mark the recipient gone;
    a 400 about the payload, a 403 or a 5xx never do (the token may be fine)."""
    jwt_token_endpoint(fresh_provider, "https://www.googleapis.com/auth/firebase.messaging")
    path = "/v1/projects/demo-project/messages:send"
    cfg = {"service_account": service_account(fresh_provider.url("/token")), "base_url": fresh_provider.url()}
    fcm_answers = [
        (Reply(404, {"error": {"status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}), True),
        (Reply(400, {"error": {"message": "The registration token is not a valid FCM registration token"}}), True),
        (Reply(400, {"error": {"message": "Invalid JSON payload received. Unknown name \"badge\""}}), False),
        (Reply(403, {"error": {"status": "PERMISSION_DENIED"}}), False),
    ]
    for reply, gone in fcm_answers:
        fresh_provider.script(path, reply)
        with pytest.raises(ProviderError) as err:
            await registry.for_kind("fcm").send(message(cfg, {"title": "t"}, channel="app_push", recipient="tok",
                                                        integration_id="int_f"))  # fmt: skip
        assert err.value.recipient_gone is gone, reply
    fresh_provider.script(path, Reply(500, "boom"))
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("fcm").send(message(cfg, {"title": "t"}, channel="app_push", recipient="tok",
                                                    integration_id="int_f"))  # fmt: skip
    assert err.value.retryable and not err.value.recipient_gone
    apns = {"team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": pem(ec_key()), "topic": "com.shop.app",
            "base_url": fresh_provider.url()}  # fmt: skip
    for reason, gone in (("BadDeviceToken", True), ("PayloadTooLarge", False)):
        fresh_provider.script("/3/device/beef", Reply(400 if gone else 413, {"reason": reason}))
        with pytest.raises(ProviderError) as err:
            await registry.for_kind("apns").send(message(apns, {"title": "t"}, channel="app_push", recipient="beef"))
        assert err.value.recipient_gone is gone, reason


def test_registry_maps_every_preset_kind() -> None:
    """Every preset named in the issue has an adapter and a config model in the registry."""
    from providers.registry import ADAPTERS, channels_for

    want = {"custom_http", "sendgrid", "iterable", "klaviyo", "responsys", "emarsys", "smtp", "twilio", "fcm", "apns",
            "webpush"}  # fmt: skip
    assert want <= set(ADAPTERS)
    assert channels_for("twilio") == ("sms",) and channels_for("webpush") == ("web_push",)
    assert json.dumps(sorted(ADAPTERS))


async def test_apns_speaks_http2(store: Store) -> None:
    """With the worker's HTTP/2 client, APNs pushes travel as HTTP/2 streams (h2c against the local server)."""
    async with h2_server() as server, httpx.AsyncClient() as http, httpx.AsyncClient(http1=False, http2=True) as h2c:
        registry = ProviderRegistry(store, http, allow_private_urls=True, http2=h2c)
        cfg = {"team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": pem(ec_key()), "topic": "com.shop.app",
               "base_url": f"http://127.0.0.1:{server.port}"}  # fmt: skip
        for n in range(2):
            push = message(cfg, {"title": f"Hi {n}"}, channel="app_push", recipient="aa11", integration_id="int_h2")
            resp = await registry.for_kind("apns").send(push)
            assert resp.status == 200
    assert [h[":path"] for h, _ in server.received] == ["/3/device/aa11"] * 2
    headers, body = server.received[0]
    assert headers[":method"] == "POST" and headers["apns-topic"] == "com.shop.app"
    assert json.loads(body) == {"aps": {"alert": {"title": "Hi 0"}}}


async def test_emarsys_client_credentials_and_file_as_text(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """Emarsys also takes OpenID Connect API credentials (client credentials, Basic); a file may arrive as text."""
    from providers.emarsys import EmarsysConfig
    from tests.api.test_integrations import CLIENT_SECRET, token_endpoint

    calls = token_endpoint(fresh_provider, "/oauth2/token")
    path = "/api/v3/event/7/trigger"
    fresh_provider.default(path, Reply(200, {"replyCode": 0, "replyText": "OK", "data": {}}))
    cfg = {"client_id": "cid", "client_secret": CLIENT_SECRET, "token_url": fresh_provider.url("/oauth2/token"),
           "event_id": "7", "base_url": fresh_provider.url()}  # fmt: skip
    await registry.for_kind("emarsys").send(message(cfg, CART, key="snd_cc"))
    assert len(calls) == 1 and calls[0].headers["authorization"].startswith("Basic ")
    assert fresh_provider.to(path)[0].headers["authorization"] == "Bearer tok-1"
    as_text = EmarsysConfig.model_validate({"service_account": json.dumps(service_account("https://t.example/token")),
                                           "event_id": "7"})  # fmt: skip
    assert as_text.service_account and as_text.service_account["client_email"].startswith("rejoin@")
    with pytest.raises(ValueError, match="lacks private_key"):
        EmarsysConfig.model_validate({"service_account": {"client_email": "x", "token_uri": "https://t"}, "event_id": "7"})
