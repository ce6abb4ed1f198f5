"""What Rejoin keeps of a provider's answer can always be stored, and a refusal's reason leads with
the vendor's own words.

A trial found an answer with a NUL byte (`202 ok\\0`) made PostgreSQL refuse the send's record: the
delivery failed after the call, Temporal retried it, and the vendor got the message again and again.
A header of invalid UTF-8 (aiohttp decodes it to lone surrogates) or a JSON `\\udcff` escape in a
message id did the same on both databases. Every provider text is now made storable where it is
made (`providers/base.py::storable`): NUL and lone surrogates become U+FFFD.

The same trial saw FCM's UNREGISTERED failures in delivery health as `rejected (404): {"error":
{... "details": [{"@type": "type.googleapis.com/google.f`: cut before the error code, so a dead
token read as a wrong project. Reasons now lead with the vendor's code and message.
"""

from __future__ import annotations

import json
import secrets
import socketserver
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from providers.apns import said_by_apns
from providers.base import ProviderError, ProviderResponse, classify_http
from providers.emarsys import said_by_emarsys
from providers.registry import ProviderRegistry
from providers.responsys import said_by_responsys
from store.engine import Store
from store.tables import Decision, Send
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
from tests.providers.keys import ec_key, pem
from tests.providers.test_presets import jwt_token_endpoint
from tests.providers.test_push_and_smtp import Browser
from tests.providers.test_push_fixes_fcm import FCM_ERROR, SCOPE, SEND, fcm_config, push_shopper
from tests.providers.util import message

EMAIL = {"subject": "Your cart", "text": "Still there"}
SID = "AC0123456789abcdef"
UNREGISTERED = {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                          "details": [{"@type": FCM_ERROR, "errorCode": "UNREGISTERED"}]}}  # fmt: skip
NOT_FOUND = {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}


def _sends(store: Store, journey_id: str | None) -> list[Send]:
    with store.session() as s:
        return list(s.exec(select(Send).where(Send.journey_id == (journey_id or ""))).all())


def _outcome(store: Store, journey_id: str | None) -> Decision:
    with store.session() as s:
        rows = s.exec(select(Decision).where(Decision.journey_id == (journey_id or ""))).all()
    [row] = [d for d in rows if d.key.endswith(":outcome")]
    return row


def _storable(text: str | None) -> bool:
    return text is not None and "\0" not in text and not any("\ud800" <= c <= "\udfff" for c in text)


async def _sendgrid_journey(
    api: httpx.AsyncClient, section: SectionKeys, base_url: str
) -> tuple[str, str, str]:
    """A SendGrid email integration at `base_url`, a cart campaign of one email and a shopper in it:
    (campaign, user, integration)."""
    config = {"api_key": "SG.key", "from_email": "shop@example.com", "base_url": base_url}
    integration = await add_integration(api, section, kind="sendgrid", config=config)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=[step("Reminder", payload=EMAIL)]))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-nul"))
    return cid, uid, str(integration["id"])


async def test_an_accepted_answer_with_a_nul_is_recorded_once_and_sent_once(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """SendGrid answers 202 `ok\\0`: before, PostgreSQL refused the record and the email went out again
    at every retry. Now the send is accepted after one call, its answer kept with U+FFFD."""
    prefix = "/sg-" + secrets.token_hex(3)
    fresh_provider.default(f"{prefix}/v3/mail/send", Reply(202, "ok\0", headers={"X-Message-Id": "msg-nul"}))
    cid, uid, _ = await _sendgrid_journey(api, section, fresh_provider.url(prefix))
    result = await journey_result(env.client, section, cid, uid, timeout=30)
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["sent"], result
    assert len(fresh_provider.to(f"{prefix}/v3/mail/send")) == 1
    [send] = _sends(store, result.journey_id)
    assert (send.status, send.attempts, send.possible_duplicate) == ("accepted", 1, False), send
    assert (send.provider_response, send.provider_message_id) == ("ok\ufffd", "msg-nul")


async def test_a_refusal_with_a_nul_fails_once_with_its_reason(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """A 400 whose body holds a NUL fails the send once, SendGrid's message leading the reason."""
    prefix = "/sg-" + secrets.token_hex(3)
    body = '{"errors": [{"message": "The to email is not valid\0.", "field": "personalizations.0.to.0.email"}]}'
    fresh_provider.default(f"{prefix}/v3/mail/send", Reply(400, body))
    cid, uid, _ = await _sendgrid_journey(api, section, fresh_provider.url(prefix))
    result = await journey_result(env.client, section, cid, uid, timeout=30)
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["failed"], result
    assert len(fresh_provider.to(f"{prefix}/v3/mail/send")) == 1
    [send] = _sends(store, result.journey_id)
    assert (send.status, send.attempts, send.provider_status) == ("failed", 1, 400), send
    reason = "rejected (400): personalizations.0.to.0.email: The to email is not valid\ufffd."
    assert _storable(send.provider_response) and (send.provider_response or "").startswith(reason), send
    assert _outcome(store, result.journey_id).reason == f"{reason} | {body.replace(chr(0), chr(0xFFFD))}"[:200]


async def test_a_message_id_a_database_cannot_encode_is_kept_readable(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """Twilio's `sid` read from its JSON carries a `\\udcff` escape (a lone surrogate once parsed):
    no database encodes it, so the record failed on SQLite too and the SMS went out at every retry."""
    prefix = "/tw-" + secrets.token_hex(3)
    path = f"{prefix}/2010-04-01/Accounts/{SID}/Messages.json"
    fresh_provider.default(path, Reply(201, '{"sid": "SM\\udcff01", "status": "queued"}'))
    config = {"account_sid": SID, "auth_token": "tw-token", "sender": "Shop", "base_url": fresh_provider.url(prefix)}
    await add_integration(api, section)  # the shopper opts in by email too (reachable_user)
    await add_integration(api, section, "sms", kind="twilio", config=config)
    spec = cart_campaign(wait="PT1H", channel_priority=["sms"], steps=[step("Text", channels=("sms",),
                                                                            payload={"body": "Hi"})])  # fmt: skip
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section, phone="+15551230077")
    await collect(api, section, dyid, add_to_cart("sku-sid"))
    result = await journey_result(env.client, section, cid, uid, timeout=30)
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["sent"], result
    assert len(fresh_provider.to(path)) == 1
    [send] = _sends(store, result.journey_id)
    assert (send.status, send.attempts, send.provider_message_id) == ("accepted", 1, "SM\ufffd01"), send


class _RawAnswer(socketserver.ThreadingTCPServer):
    """A provider answering every request with the same raw bytes (a header of invalid UTF-8 is
    what the scriptable provider server, which writes text, cannot send)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: bytes) -> None:
        self.answer, self.calls = answer, 0
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = 0
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self.rfile.read(length)
                server.calls += 1
                self.wfile.write(server.answer)

        super().__init__(("127.0.0.1", 0), Handler)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def raw_answer() -> Iterator[_RawAnswer]:
    server = _RawAnswer(b"HTTP/1.1 202 Accepted\r\nX-Message-Id: m\xff1\r\nContent-Length: 3\r\n"
                        b"Connection: close\r\n\r\nok\0")  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_a_header_of_invalid_utf8_is_kept_readable(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, raw_answer: _RawAnswer
) -> None:
    """`X-Message-Id: m\\xff1` (the worker's aiohttp reads `m\\udcff1`): the journey's send is accepted
    once; the integration's test call answers with what the provider said."""
    cid, uid, integration_id = await _sendgrid_journey(api, section, raw_answer.url())
    result = await journey_result(env.client, section, cid, uid, timeout=30)
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["sent"], result
    assert raw_answer.calls == 1
    [send] = _sends(store, result.journey_id)
    assert (send.attempts, send.provider_message_id, send.provider_response) == (1, "m\ufffd1", "ok\ufffd"), send
    r = await api.post(f"/api/v1/integrations/{integration_id}/test", headers=section.mgmt,
                       json={"recipient": "jane@example.com", "payload": EMAIL})  # fmt: skip
    assert r.status_code == 200, r.text
    answer = r.json()  # the test call's client (httpx) reads headers as Latin-1: "mÿ1"
    assert answer["ok"] and answer["body"] == "ok\ufffd" and _storable(answer["headers"]["x-message-id"]), answer


async def test_every_adapter_hands_over_storable_text(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """Web Push answering 201 `queued\\0id`, a custom HTTP endpoint and a refusal's error: nothing they
    hand over (body, headers, message id, error text) keeps a NUL."""
    browser = Browser(fresh_provider.url("/push/nul"))
    fresh_provider.default("/push/nul", Reply(201, "queued\0id", headers={"Location": "/m/1"}))
    cfg = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    push = message(cfg, {"title": "t"}, channel="web_push", recipient=json.dumps(browser.subscription))
    resp = await registry.for_kind("webpush").send(push)
    assert (resp.body, resp.message_id) == ("queued\ufffdid", "/m/1")
    fresh_provider.default("/custom/nul", Reply(200, "a\0b", headers={"X-Message-Id": "id-1"}))
    resp = await registry.for_kind("custom_http").send(message({"url": fresh_provider.url("/custom/nul")}))
    assert (resp.body, resp.message_id) == ("a\ufffdb", "id-1")
    fresh_provider.default("/custom/bad", Reply(422, '{"error": "bad\\u0000"}\0'))
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("custom_http").send(message({"url": fresh_provider.url("/custom/bad")}))
    assert _storable(err.value.message) and _storable(err.value.body), err.value.message


def test_a_response_and_an_error_are_storable_as_they_are_made() -> None:
    """Whoever builds them: NUL and lone surrogates become U+FFFD; a message id that is no text is
    kept as its digits, or not at all, and never longer than its column."""
    resp = ProviderResponse(202, "a\0b\udcff", {"x-id\udcff": "v\0"}, "m\udcff")
    assert (resp.body, resp.headers, resp.message_id) == ("a\ufffdb\ufffd", {"x-id\ufffd": "v\ufffd"}, "m\ufffd")
    assert ProviderResponse(201, message_id=12345).message_id == "12345"  # type: ignore[arg-type]
    assert ProviderResponse(201, message_id={"id": 1}).message_id is None  # type: ignore[arg-type]
    assert ProviderResponse(201, message_id="x" * 500).message_id == "x" * 300
    err = classify_http(400, "no\0\ud800", {"x": "\0"})
    assert err is not None and (err.message, err.body, err.headers) == (
        "rejected (400): no\ufffd\ufffd", "no\ufffd\ufffd", {"x": "\ufffd"}
    )


# ---------------------------------------------------------------- reasons lead with the vendor's words


async def test_fcm_unregistered_and_a_bare_not_found_read_apart_in_delivery_health(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """A dead token (UNREGISTERED, an opt-out) and a wrong project (a bare NOT_FOUND) both answer 404;
    their reasons now say which, within what delivery health and the decision trace keep."""
    jwt_token_endpoint(fresh_provider, SCOPE)
    fresh_provider.script(SEND, Reply(404, UNREGISTERED), Reply(404, NOT_FOUND))
    await add_integration(api, section, "app_push", kind="fcm", identifier_type="custom",
                          config=fcm_config(fresh_provider))  # fmt: skip
    spec = cart_campaign(wait="PT1H", channel_priority=["app_push"], steps=[step("Nudge", channels=("app_push",))])
    cid = await create_campaign(api, section, spec)
    reasons = []
    for sku in ("sku-gone", "sku-project"):  # one after the other: the script's replies go in order
        uid, _ = await push_shopper(api, section, sku)
        result = await journey_result(env.client, section, cid, uid)
        reasons.append(_outcome(store, result.journey_id).reason or "")
    assert reasons[0].startswith("rejected (404): UNREGISTERED: Requested entity was not found. | "), reasons
    assert reasons[1].startswith("rejected (404): NOT_FOUND: Requested entity was not found. | "), reasons
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await api.get(f"/api/v1/campaigns/{cid}/deliveries", params={"to": until}, headers=section.mgmt)
    assert r.status_code == 200, r.text
    shown = sorted(x["reason"].split(" | ")[0] for x in r.json()["failure_reasons"])
    assert shown == ["rejected (404): NOT_FOUND: Requested entity was not found.",
                     "rejected (404): UNREGISTERED: Requested entity was not found."], r.json()  # fmt: skip


async def _refusal(registry: ProviderRegistry, kind: str, msg: Any) -> str:
    with pytest.raises(ProviderError) as err:
        await registry.for_kind(kind).send(msg)
    return err.value.message


async def test_vendor_refusals_lead_with_the_vendors_code_and_message(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """SendGrid's errors[].message, Twilio's code and message, Klaviyo's and Iterable's error, a push
    service's: first, then the raw answer as before (kept whole in the send's record)."""
    base = fresh_provider.url()
    sendgrid = {"errors": [{"message": "The to email does not contain a valid address.",
                            "field": "personalizations.0.to.0.email", "help": "http://sendgrid.com/docs"}]}  # fmt: skip
    fresh_provider.script("/v3/mail/send", Reply(400, sendgrid))
    said = await _refusal(registry, "sendgrid", message({"api_key": "SG.k", "from_email": "s@example.com",
                                                         "base_url": base}, EMAIL))  # fmt: skip
    assert said == ("rejected (400): personalizations.0.to.0.email: The to email does not contain a valid address."
                    f" | {json.dumps(sendgrid)}"), said  # fmt: skip

    twilio = {"code": 21211, "message": "The 'To' number +15551234567 is not a valid phone number.",
              "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}  # fmt: skip
    fresh_provider.script(f"/2010-04-01/Accounts/{SID}/Messages.json", Reply(400, twilio))
    sms = message({"account_sid": SID, "auth_token": "tw-token", "sender": "Shop", "base_url": base},
                  {"body": "Hi"}, channel="sms", recipient="+15551234567")  # fmt: skip
    said = await _refusal(registry, "twilio", sms)
    assert said.startswith("rejected (400): 21211: The 'To' number +15******567 is not a valid phone number. | {"), said

    klaviyo = {"errors": [{"id": "e1", "status": 400, "code": "invalid", "title": "Invalid input.",
                           "detail": "The phone number provided is not valid.",
                           "source": {"pointer": "/data"}}]}  # fmt: skip
    fresh_provider.script("/api/events", Reply(400, klaviyo))
    said = await _refusal(registry, "klaviyo", message({"api_key": "pk", "base_url": base}))
    assert said.startswith("rejected (400): invalid: The phone number provided is not valid. | {"), said

    fresh_provider.script("/api/email/target", Reply(400, {"msg": "Invalid campaignId", "code": "BadParams"}))
    said = await _refusal(registry, "iterable", message({"api_key": "it", "campaign_id": 7, "base_url": base}))
    assert said.startswith("rejected (400): BadParams: Invalid campaignId | {"), said

    browser = Browser(fresh_provider.url("/push/expired-said"))
    autopush = {"code": 410, "errno": 106, "error": "Gone", "message": "Request did not validate subscription expired"}
    fresh_provider.script("/push/expired-said", Reply(410, autopush))
    cfg = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    said = await _refusal(registry, "webpush", message(cfg, {"t": 1}, channel="web_push",
                                                       recipient=json.dumps(browser.subscription)))  # fmt: skip
    assert said.startswith("rejected (410): Gone: Request did not validate subscription expired | {"), said

    fresh_provider.script("/v3/mail/send", Reply(400, "<html>Bad Request</html>"))  # nothing to read: as before
    said = await _refusal(registry, "sendgrid", message({"api_key": "SG.k", "from_email": "s@example.com",
                                                         "base_url": base}, EMAIL))  # fmt: skip
    assert said == "rejected (400): <html>Bad Request</html>", said


def test_apns_emarsys_and_responsys_words_are_read_from_their_answers() -> None:
    """The adapters whose answers the local server does not reach here (APNs speaks HTTP/2): their
    readings, and a refusal's text made from one."""
    assert said_by_apns('{"reason": "Unregistered", "timestamp": 1790000000456}') == "Unregistered"
    assert said_by_emarsys('{"replyCode": 6003, "replyText": "Invalid event id"}') == "6003: Invalid event id"
    responsys = '{"type": "", "title": "Invalid request", "errorCode": "INVALID_PARAMETER", "detail": "Bad list"}'
    assert said_by_responsys(responsys) == "INVALID_PARAMETER: Bad list"
    assert said_by_apns("<html>502</html>") is None and said_by_emarsys("[]") is None
    err = classify_http(400, '{"reason": "BadDeviceToken"}', {}, said_by_apns)
    assert err is not None and err.message == 'rejected (400): BadDeviceToken | {"reason": "BadDeviceToken"}'
