"""Web Push (VAPID + RFC 8291) with a decrypting receiver, and native SMTP email against a local server."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import http_ece
import httpx
import jwt
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from providers.base import ProviderError
from providers.registry import ProviderRegistry
from providers.webpush import b64url, unb64url
from store.engine import Store
from store.tables import Decision, OptIn
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    new_dyid,
    reachable_user,
    step,
)
from tests.provider_server import ProviderServer, Received, Reply
from tests.providers.keys import ec_key, pem
from tests.providers.util import message


class Browser:
    """A push subscriber: its own P-256 key pair and auth secret, like PushManager.subscribe()."""

    def __init__(self, endpoint: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        public = self.key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.subscription = {"endpoint": endpoint, "expirationTime": None,
                             "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)}}  # fmt: skip

    def decrypt(self, body: bytes) -> Any:
        return json.loads(http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"))


async def test_webpush_payload_decrypts_with_subscription_key(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """The receiver decrypts the aes128gcm body with the subscription's private key; VAPID JWT verifies."""
    browser = Browser(fresh_provider.url("/push/sub-1"))
    received: list[Any] = []

    def receive(req: Received) -> Reply:
        scheme, _, params = req.headers["authorization"].partition(" ")
        fields = dict(p.strip().split("=", 1) for p in params.split(","))
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(fields["k"]))
        claims = jwt.decode(fields["t"], public, algorithms=["ES256"], audience=fresh_provider.url().rstrip("/"))
        assert scheme == "vapid" and claims["sub"] == "mailto:ops@shop.example"
        received.append(browser.decrypt(req.body))
        return Reply(201, "", headers={"Location": "/push/msg/1"})

    fresh_provider.handler("/push/sub-1", receive)
    cfg = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example", "ttl": 3600}
    payload = {"title": "Your cart", "body": "2 items waiting", "url": "https://shop.example/cart"}
    resp = await registry.for_kind("webpush").send(
        message(cfg, payload, channel="web_push", recipient=json.dumps(browser.subscription), key="snd_w")
    )
    assert received == [payload] and resp.message_id == "/push/msg/1"
    req = fresh_provider.to("/push/sub-1")[0]
    assert req.headers["content-encoding"] == "aes128gcm" and req.headers["ttl"] == "3600"
    assert req.headers["topic"] and len(req.headers["topic"]) <= 32
    assert b"2 items waiting" not in req.body


async def test_webpush_gone_subscription_is_permanent(registry: ProviderRegistry, fresh_provider: ProviderServer) -> None:
    """A 410 from the push service (subscription expired) is a permanent failure."""
    browser = Browser(fresh_provider.url("/push/gone"))
    fresh_provider.default("/push/gone", Reply(410, "gone"))
    raw = ec_key().private_numbers().private_value.to_bytes(32, "big")
    cfg = {"vapid_private_key": b64url(raw), "subject": "https://shop.example"}  # raw base64url form also accepted
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("webpush").send(message(cfg, {"t": 1}, channel="web_push",
                                                        recipient=json.dumps(browser.subscription)))  # fmt: skip
    assert err.value.status == 410 and not err.value.retryable and err.value.recipient_gone


async def test_webpush_payload_over_one_record_fails_without_a_call(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """RFC 8291 allows 3993 bytes of plaintext: a longer payload fails for good, naming its size,
    and the push service is never called (it would answer 413); the limit itself still goes."""
    browser = Browser(fresh_provider.url("/push/big"))
    fresh_provider.default("/push/big", Reply(201, ""))
    cfg = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    fits = {"body": "x" * (3993 - len('{"body":""}'))}
    await registry.for_kind("webpush").send(
        message(cfg, fits, channel="web_push", recipient=json.dumps(browser.subscription))
    )
    assert browser.decrypt(fresh_provider.to("/push/big")[0].body) == fits
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("webpush").send(
            message(cfg, {"body": fits["body"] + "x"}, channel="web_push", recipient=json.dumps(browser.subscription))
        )
    assert not err.value.retryable and "3994 bytes" in str(err.value)
    assert len(fresh_provider.to("/push/big")) == 1


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


async def test_smtp_native_email(registry: ProviderRegistry, smtp_server: tuple[Mailbox, int]) -> None:
    """SMTP: subject, text + html parts, Message-ID derived from the send key; a 550 recipient is permanent."""
    box, port = smtp_server
    cfg = {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "shop@shop.example", "from_name": "Shop"}
    payload = {"subject": "Your cart", "text": "2 items", "html": "<p>2 items</p>"}
    resp = await registry.for_kind("smtp").send(message(cfg, payload, key="snd_m"))
    mail_from, rcpts, raw = box.messages[0]
    mail = message_from_bytes(raw)
    assert mail_from == "shop@shop.example" and rcpts == ["jane@example.com"]
    assert mail["Subject"] == "Your cart" and mail["X-Rejoin-Send-Key"] == "snd_m"
    assert mail["Message-ID"] == resp.message_id
    parts = {p.get_content_type(): p.get_payload(decode=True).decode().strip() for p in mail.walk() if not p.is_multipart()}
    assert parts == {"text/plain": "2 items", "text/html": "<p>2 items</p>"}
    box.refuse.add("bounce@example.com")
    with pytest.raises(ProviderError) as err:
        await registry.for_kind("smtp").send(message(cfg, payload, recipient="bounce@example.com"))
    assert not err.value.retryable


async def test_web_push_journey_end_to_end(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """A browser subscription sent as a push opt-in receives the journey's step, decrypted by the receiver."""
    browser = Browser(fresh_provider.url("/push/e2e"))
    got: list[Any] = []

    def receive(req: Received) -> Reply:
        got.append(browser.decrypt(req.body))
        return Reply(201, "")

    fresh_provider.handler("/push/e2e", receive)
    await add_integration(api, section, "web_push", kind="webpush", identifier_type="custom",
                          config={"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"})  # fmt: skip
    payload = {"title": "Forgot something?", "sku": "${Items in cart|sku|item1}"}
    spec = cart_campaign(wait="PT1H", channel_priority=["web_push"],
                         steps=[step("Nudge", channels=("web_push",), payload=payload)])  # fmt: skip
    cid = await create_campaign(api, section, spec)
    dyid = new_dyid()
    optin = {"name": "Push opt-in", "properties": {"dyType": "message-optin-v1", "channelType": "WEB_PUSH",
                                                   "pushID": json.dumps(browser.subscription)}}  # fmt: skip
    accepted = await collect(api, section, dyid, optin, add_to_cart("sku-wp"))
    uid = accepted.get("user_id") or (await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)).json()["id"]
    result = await journey_result(env.client, section, cid, uid)
    assert [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")] == ["sent"], result
    assert got == [{"title": "Forgot something?", "sku": "sku-wp"}]


async def test_expired_web_push_subscription_is_opted_out_and_never_called_again(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """A 410 from the push service fails the step once, opts the subscription out (source 'provider'),
    and the next journey finds the user unreachable on web push instead of calling the dead endpoint."""
    browser = Browser(fresh_provider.url("/push/expired"))
    fresh_provider.default("/push/expired", Reply(410, "push subscription has unsubscribed or expired"))
    await add_integration(api, section, "web_push", kind="webpush", identifier_type="custom",
                          config={"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"})  # fmt: skip
    spec = cart_campaign(wait="PT1H", channel_priority=["web_push"], steps=[step("Nudge", channels=("web_push",))])
    first = await create_campaign(api, section, spec)
    dyid = new_dyid()
    optin = {"name": "Push opt-in", "properties": {"dyType": "message-optin-v1", "channelType": "WEB_PUSH",
                                                   "pushID": json.dumps(browser.subscription)}}  # fmt: skip
    await collect(api, section, dyid, optin, add_to_cart("sku-gone"))
    uid = (await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)).json()["id"]
    result = await journey_result(env.client, section, first, uid)
    failed = [d for d in result.decisions if d.outcome == "failed"]
    assert len(failed) == 1 and failed[0].channel == "web_push", result
    with store.session() as s:
        row = s.exec(select(OptIn).where(OptIn.section_id == section.id, OptIn.channel == "web_push")).one()
        assert not row.opted_in and row.source == "provider"
        outcome = s.exec(select(Decision).where(Decision.journey_id == result.journey_id, Decision.outcome == "failed")).one()
        assert outcome.detail.get("opted_out") == "recipient_gone", outcome.detail
    second = await create_campaign(api, section, {**spec, "name": "Second nudge"})
    await collect(api, section, dyid, add_to_cart("sku-gone-2"))
    again = await journey_result(env.client, section, second, uid)
    assert not [d for d in again.decisions if d.outcome in ("sent", "failed")], again
    assert len(fresh_provider.to("/push/expired")) == 1  # the dead endpoint was called once, ever


async def test_native_smtp_journey_adds_pixel_and_wraps_links(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, smtp_server: tuple[Mailbox, int]
) -> None:
    """Native email tracks by itself: the pixel is added and every link is a signed tracking link."""
    box, port = smtp_server
    await add_integration(api, section, "email", kind="smtp", config={
        "host": "127.0.0.1", "port": port, "security": "none", "from_email": "shop@shop.example"})  # fmt: skip
    payload = {"subject": "Your cart", "html": '<p><a href="https://shop.example/cart">Back to your cart</a></p>'}
    cid = await create_campaign(api, section, cart_campaign(steps=[step("Nudge", payload=payload)]))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    mail = message_from_bytes(box.messages[-1][2])
    html = next(p.get_payload(decode=True).decode() for p in mail.walk() if p.get_content_type() == "text/html")
    assert 'href="https://shop.example/cart"' not in html and "/t/c/" in html, html
    assert "/t/o/" in html and 'width="1"' in html, html
