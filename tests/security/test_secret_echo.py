"""A vendor that repeats the credential it refused (SendGrid's 401 quoting the bearer key, Klaviyo's
503 repeating its `pk_` key, an OAuth2 `error_description` quoting the client secret, an echoed
Basic header) never gets that secret stored or shown: the integration's own secrets, and the forms
a request carries them in, are masked as `[secret]` wherever Rejoin keeps a provider's text
(`providers/base.py::Redactor`)."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from activities.provider_retry import retry_later
from providers.base import ProviderError
from providers.oauth import TokenRejected
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
    make_section,
    reachable_user,
)
from tests.provider_server import ProviderServer, Reply
from tests.providers.clients import outbound
from tests.providers.util import message

SENDGRID_KEY = "SG.SECRETSENDGRID123"
KLAVIYO_KEY = "pk_" + "k1avIy0" * 5
CLIENT_SECRET = "cs-Very/Secret+Value"  # characters that form-encoding changes
SECRET_MASK = "[secret]"  # providers/base.py::SECRET_MASK


@pytest.fixture
async def registry(store: Store) -> AsyncIterator[ProviderRegistry]:
    """Adapters on the worker's client (aiohttp), as in tests/providers."""
    async with outbound("aiohttp") as http:
        yield ProviderRegistry(store, http, allow_private_urls=True)


def sendgrid(provider: ProviderServer) -> dict[str, Any]:
    return {"api_key": SENDGRID_KEY, "from_email": "shop@example.com", "template_id": "d-123",
            "base_url": provider.url()}


def sendgrid_refusal() -> Reply:
    return Reply(401, {"errors": [{"message": f"authorization grant is invalid: Bearer {SENDGRID_KEY}"}]})


async def test_sendgrid_401_echoing_the_key_is_masked(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """The error's message and body carry `[secret]`, not the key (before: both quoted it)."""
    fresh_provider.script("/v3/mail/send", sendgrid_refusal())
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("sendgrid").send(message(sendgrid(fresh_provider)))
    assert err.value.retryable is False and err.value.status == 401
    for text in (err.value.message, err.value.body, str(err.value)):
        assert SENDGRID_KEY not in text and f"Bearer {SECRET_MASK}" in text, text


async def test_klaviyo_503_repeating_the_key_is_masked_in_the_temporal_error(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """A retried answer becomes the activity error Temporal records (and its UI shows): masked."""
    fresh_provider.script("/api/events", Reply(503, f"upstream refused key {KLAVIYO_KEY} (quota)"))
    config = {"api_key": KLAVIYO_KEY, "base_url": fresh_provider.url()}
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("klaviyo").send(message(config))
    assert err.value.retryable
    retried = retry_later(err.value, "snd_test")
    assert KLAVIYO_KEY not in str(retried) and KLAVIYO_KEY not in retried.message
    assert SECRET_MASK in retried.message


async def test_an_echoed_basic_header_and_a_cut_secret_are_masked(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """Basic `user:password` (base64) echoed back, and a snippet cut in the middle of a secret."""
    password = "p4ssw0rd-Long-Enough"
    basic = base64.b64encode(f"shop:{password}".encode()).decode()
    config = {"url": fresh_provider.url("/hook"), "auth": {"type": "basic", "username": "shop", "password": password}}
    fresh_provider.script("/hook", Reply(403, f"refused Authorization: Basic {basic}"))
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("custom_http").send(message(config))
    assert basic not in err.value.message and basic.rstrip("=") not in err.value.body
    assert f"Basic {SECRET_MASK}" in err.value.body
    # classify_http quotes 500 characters of the body: the key's first half ends that snippet.
    fresh_provider.script("/hook", Reply(403, "x" * 490 + password + " trailing"))
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("custom_http").send(message(config))
    assert password[:10] not in err.value.message and err.value.message.endswith(SECRET_MASK)


async def test_token_endpoint_error_description_quoting_the_secret_is_masked(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """`_raise_for_token_status`: the description is shown, the secret in it (plain or form-encoded) is not."""
    from urllib.parse import quote

    described = f"client_secret {CLIENT_SECRET} (sent as {quote(CLIENT_SECRET, safe='')}) is not valid"
    fresh_provider.script("/token", Reply(401, {"error": "invalid_client", "error_description": described}))
    auth = {"type": "oauth2", "token_url": fresh_provider.url("/token"), "client_id": "cid",
            "client_secret": CLIENT_SECRET, "client_auth": "post"}  # fmt: skip
    config = {"url": fresh_provider.url("/hook"), "auth": auth}
    with pytest.raises(TokenRejected) as err:
        await registry.for_kind("custom_http").send(message(config))
    text = str(err.value)
    assert "invalid_client" in text and CLIENT_SECRET not in text and quote(CLIENT_SECRET, safe="") not in text
    # The save-time check goes through the same redactor.
    fresh_provider.script("/token", Reply(401, {"error": "invalid_client", "error_description": described}))
    with pytest.raises(TokenRejected) as err:
        await registry.validate("custom_http", config)
    assert CLIENT_SECRET not in str(err.value) and SECRET_MASK in str(err.value)


async def test_an_echoed_access_token_is_masked(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """A token the credentials obtained is a credential too: the vendor quoting back the bearer
    token it refused (an error) or echoing its request (an accepted answer) shows `[secret]`."""
    token = "at-" + secrets.token_urlsafe(24)
    auth = {"type": "oauth2", "token_url": fresh_provider.url("/token"), "client_id": "cid",
            "client_secret": CLIENT_SECRET, "client_auth": "post"}  # fmt: skip
    config = {"url": fresh_provider.url("/hook"), "auth": auth}
    fresh_provider.default("/token", Reply(200, {"access_token": token, "expires_in": 3600}))
    fresh_provider.script("/hook", Reply(400, f"malformed request with Authorization: Bearer {token}"))
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("custom_http").send(message(config))
    for text in (err.value.message, err.value.body, str(err.value)):
        assert token not in text and f"Bearer {SECRET_MASK}" in text, text
    fresh_provider.script("/hook", Reply(200, {"received_headers": {"authorization": f"Bearer {token}"}}))
    resp = await registry.for_kind("custom_http").send(message(config))
    assert resp.status == 200 and token not in resp.body and SECRET_MASK in resp.body


async def test_an_echoed_vapid_token_is_masked(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """Web Push's `Authorization: vapid t=<JWT>` pushes to that service as the shop for 12 h: a push
    service echoing its request shows `[secret]` for the token, in a refusal and in an acceptance."""
    from tests.providers.keys import ec_key, pem
    from tests.providers.test_push_and_smtp import Browser

    browser = Browser(fresh_provider.url("/push/echo"))
    cfg = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    push = message(cfg, {"t": 1}, channel="web_push", recipient=json.dumps(browser.subscription))
    seen: list[str] = []

    def echo(status: int) -> Any:
        def reply(req: Any) -> Reply:
            seen.append(req.headers["authorization"].split("t=", 1)[1].split(",", 1)[0])
            return Reply(status, f"request had Authorization: {req.headers['authorization']}")
        return reply

    fresh_provider.handler("/push/echo", echo(400))
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("webpush").send(push)
    for text in (err.value.message, err.value.body, str(err.value)):
        assert seen[-1] not in text and f"t={SECRET_MASK}" in text, text
    fresh_provider.handler("/push/echo", echo(201))
    resp = await registry.for_kind("webpush").send(push)
    assert resp.status == 201 and seen[-1] not in resp.body and f"t={SECRET_MASK}" in resp.body, resp.body


def test_short_secrets_are_masked_only_as_whole_tokens() -> None:
    """A 4-character password is masked where it stands alone, not inside other words."""
    from providers.base import Redactor

    auth = {"type": "basic", "username": "u", "password": "abcd"}
    redactor = Redactor.of({"auth": auth, "api_key": "K3y-Long-Secret"})
    assert redactor.redact("bad password abcd; xabcdx") == f"bad password {SECRET_MASK}; xabcdx"
    assert redactor.redact("key=K3y-Long-Secret&x") == f"key={SECRET_MASK}&x"
    assert redactor.redact("mail jane@example.com") == "mail j***@example.com"  # addresses still masked


async def test_test_call_answer_masks_the_echoed_key(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """`POST /integrations/{id}/test`: neither the body nor the error shows the key."""
    fresh_provider.script("/v3/mail/send", sendgrid_refusal())
    integration = await add_integration(api, section, kind="sendgrid", config=sendgrid(fresh_provider))
    r = await api.post(f"/api/v1/integrations/{integration['id']}/test", json={"recipient": "jane@example.com"},
                       headers=section.mgmt)  # fmt: skip
    assert r.status_code == 200 and r.json()["ok"] is False, r.text
    assert SENDGRID_KEY not in r.text and SECRET_MASK in r.json()["error"] and SECRET_MASK in r.json()["body"]


async def test_a_failed_delivery_keeps_no_secret(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, fresh_provider: ProviderServer
) -> None:
    """A journey whose send SendGrid refuses quoting the key: the send row, the decision trace and
    the campaign's deliveries show `[secret]`."""
    sec = await make_section(api, "echo-" + secrets.token_hex(3))
    fresh_provider.default("/v3/mail/send", sendgrid_refusal())
    await add_integration(api, sec, kind="sendgrid", config=sendgrid(fresh_provider))
    cid = await create_campaign(api, sec, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, sec, cid, uid)
    assert len(fresh_provider.to("/v3/mail/send")) == 1
    with store.session() as s:
        send = s.exec(select(Send).where(Send.journey_id == result.journey_id)).one()
        row = json.dumps(send.model_dump(mode="json"))
    assert send.status == "failed" and SENDGRID_KEY not in row and SECRET_MASK in row, row
    for path in (f"/api/v1/users/{dyid}/journeys", f"/api/v1/campaigns/{cid}/deliveries"):
        r = await api.get(path, headers=sec.mgmt)
        assert r.status_code == 200, r.text
        assert SENDGRID_KEY not in r.text, (path, r.text)
