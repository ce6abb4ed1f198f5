"""What vendors tell us beyond the status code: Twilio's error codes, SendGrid's rate-limit reset,
and what of a push send may reach the logs or a stored answer."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from activities.provider_retry import retry_later
from providers.base import ProviderError, kept_answer, parse_rate_limit_reset
from providers.registry import ProviderRegistry
from security.redact import configure_logging, install_log_redaction, mask
from store.engine import Store
from store.tables import OptIn
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Reply
from tests.providers.keys import ec_key, pem, service_account
from tests.providers.test_presets import jwt_token_endpoint
from tests.providers.util import message

SID = "AC0123456789abcdef"
TWILIO_PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"


def _twilio_config(provider: ProviderServer) -> dict[str, str]:
    return {"account_sid": SID, "auth_token": "tw-token", "sender": "Shop", "base_url": provider.url()}


@pytest.mark.parametrize(
    ("code", "gone"),
    [
        (21610, True),  # the recipient replied STOP
        (21211, True),  # not a valid phone number
        (21614, True),  # not a mobile number (a landline)
        (21408, False),  # the account may not send to that region: about us, not the number
        (21606, False),  # the sender cannot send: about the configuration
        (None, False),  # a 400 without a code says nothing about the number
    ],
)
async def test_twilio_codes_permanent_for_the_number_mark_the_recipient_gone(
    registry: ProviderRegistry, fresh_provider: ProviderServer, code: int | None, gone: bool
) -> None:
    body = {"code": code, "message": "refused", "status": 400} if code else {"message": "Bad request"}
    fresh_provider.script(TWILIO_PATH, Reply(400, body))
    sms = message(_twilio_config(fresh_provider), {"body": "Hi"}, channel="sms", recipient="+15551234567")
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("twilio").send(sms)
    assert not err.value.retryable and err.value.status == 400
    assert err.value.recipient_gone is gone


async def test_twilio_throttling_is_still_retried(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    fresh_provider.script(TWILIO_PATH, Reply(429, {"code": 20429, "message": "Too Many Requests"}, headers={"Retry-After": "2"}))
    sms = message(_twilio_config(fresh_provider), {"body": "Hi"}, channel="sms", recipient="+15551234567")
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("twilio").send(sms)
    assert err.value.retryable and err.value.retry_after == 2 and not err.value.recipient_gone


async def test_a_twilio_stop_reply_opts_the_number_out_and_later_campaigns_never_call(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """21610 (the recipient replied STOP) fails the step once and opts the phone out (source
    'provider'); the next campaign finds the user unreachable by SMS and never calls Twilio."""
    stop = {"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}
    fresh_provider.default(TWILIO_PATH, Reply(400, stop))
    await add_integration(api, section)  # email (outbox): reachable_user opts in by e-mail too
    await add_integration(api, section, "sms", kind="twilio", config=_twilio_config(fresh_provider))
    spec = cart_campaign(wait="PT1H", channel_priority=["sms"], steps=[step("Text", channels=("sms",), payload={"body": "Hi"})])
    first = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section, phone="+15551230000")
    await collect(api, section, dyid, add_to_cart("sku-stop"))
    result = await journey_result(env.client, section, first, uid)
    assert [d.channel for d in result.decisions if d.outcome == "failed"] == ["sms"], result
    with store.session() as s:
        row = s.exec(select(OptIn).where(OptIn.section_id == section.id, OptIn.channel == "sms")).one()
        assert not row.opted_in and row.source == "provider"
    second = await create_campaign(api, section, {**spec, "name": "Second text"})
    await collect(api, section, dyid, add_to_cart("sku-stop-2"))
    again = await journey_result(env.client, section, second, uid)
    assert not [d for d in again.decisions if d.outcome in ("sent", "failed")], again
    assert len(fresh_provider.to(TWILIO_PATH)) == 1  # Twilio was called once, ever


def test_rate_limit_reset_is_seconds_until_the_epoch_it_names() -> None:
    now = 1_800_000_000.0
    assert parse_rate_limit_reset("1800000007", now) == 7
    assert parse_rate_limit_reset("1799999990", now) == 0  # already reset (clocks differ): no wait
    assert parse_rate_limit_reset("1800000000000", now) is None  # milliseconds: misread, back off instead
    assert parse_rate_limit_reset("soon", now) is None and parse_rate_limit_reset(None, now) is None


async def test_sendgrid_429_waits_for_x_ratelimit_reset(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """SendGrid's 429 has no Retry-After, only X-RateLimit-Reset (epoch seconds): Temporal is asked
    to wait until then, not the blind back-off. A Retry-After, when present, still wins."""
    cfg = {"api_key": "SG.key", "from_email": "shop@example.com", "template_id": "d-1", "base_url": fresh_provider.url()}
    reset = str(int(time.time()) + 8)
    fresh_provider.script(
        "/v3/mail/send",
        Reply(429, {"errors": [{"message": "too many requests"}]}, headers={"X-RateLimit-Reset": reset}),
        Reply(429, headers={"X-RateLimit-Reset": reset, "Retry-After": "2"}),
    )
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("sendgrid").send(message(cfg, {"firstName": "Jane"}))
    assert err.value.retryable and err.value.retry_after is not None and 6 <= err.value.retry_after <= 8
    delay = retry_later(err.value, "snd_sg").next_retry_delay
    assert delay is not None and 6 <= delay.total_seconds() <= 8
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("sendgrid").send(message(cfg, {"firstName": "Jane"}))
    assert err.value.retry_after == 2


async def test_a_push_token_never_reaches_the_logs(
    store: Store, fresh_provider: ProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An APNs send through the worker's httpx client (the HTTP/2 one) that finds the token dead:
    nothing logged at INFO names the token (httpx logged `HTTP Request: POST …/3/device/<token>`)."""
    token = "f00dfeedcafe0123456789abcdef0123456789abcdef"
    install_log_redaction()  # what every worker and API process does at start
    fresh_provider.script(f"/3/device/{token}", Reply(410, {"reason": "Unregistered", "timestamp": 1790000000456}))
    cfg = {"team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": pem(ec_key()), "topic": "com.shop.app",
           "base_url": fresh_provider.url()}  # fmt: skip
    async with httpx.AsyncClient() as http:
        registry = ProviderRegistry(store, http, allow_private_urls=True, http2=http)
        with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as err:
            await registry.for_kind("apns").send(message(cfg, {"title": "Hi"}, channel="app_push", recipient=token))
    assert err.value.recipient_gone
    assert token not in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore")) and r.levelno < logging.WARNING]


def test_the_process_logging_setup_quiets_the_request_loggers(caplog: pytest.LogCaptureFixture) -> None:
    """`rejoin …` and `python worker.py` log at INFO, except the HTTP clients' request lines."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET)  # as a fresh process has them
    with caplog.at_level(logging.INFO):
        configure_logging()
        for name in ("httpx", "httpcore"):
            assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name


def test_a_json_timestamp_is_not_masked_as_a_phone_number() -> None:
    """APNs 410's epoch milliseconds stay readable, with or without a space after the colon; phone
    numbers in text, as JSON strings or under other keys are still masked."""
    for answer in ('{"reason":"Unregistered","timestamp":1790000000456}',
                   '{"reason": "Unregistered", "timestamp": 1790000000456}'):  # fmt: skip
        assert mask(answer) == answer and kept_answer(answer) == answer
    assert mask('{"timestamp": "+33612345678"}') == '{"timestamp": "+33******678"}'
    assert mask('{"phone": 15551234567, "to": "+15551234567"}') == '{"phone": 155******567, "to": "+15******567"}'
    assert mask("call +33612345678, timestamp 15551234567") == "call +33******678, timestamp 155******567"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, "<h1>Service Error</h1>", headers={"Content-Type": "text/html"}),  # a proxy's page
        Reply(202, ""),
        Reply(200, {"success": False, "error": "quota"}),
    ],
)
async def test_a_2xx_without_the_vendors_id_is_no_acceptance(
    registry: ProviderRegistry, fresh_provider: ProviderServer, reply: Reply
) -> None:
    """A trial's sink answered Twilio's URL with 200 HTML, an empty 202, a 200 `success: false`:
    each was recorded accepted (no sid) and counted sent, though no SMS left. Twilio and FCM always
    return their message id: without it the send fails for good, saying why."""
    fresh_provider.script(TWILIO_PATH, reply)
    sms = message(_twilio_config(fresh_provider), {"body": "Hi"}, channel="sms", recipient="+15551234567")
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("twilio").send(sms)
    assert not err.value.retryable and err.value.status == reply.status
    assert "without a message sid" in err.value.message and "base_url" in err.value.message

    claims = jwt_token_endpoint(fresh_provider, "https://www.googleapis.com/auth/firebase.messaging")
    path = "/v1/projects/demo-project/messages:send"
    fresh_provider.script(path, reply)
    cfg = {"service_account": service_account(fresh_provider.url("/token")), "base_url": fresh_provider.url()}
    push = message(cfg, {"title": "Hi", "body": "Cart"}, channel="app_push", recipient="dev-token-1")
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("fcm").send(push)
    assert not err.value.retryable and "without a message name" in err.value.message
    assert len(claims) == 1
