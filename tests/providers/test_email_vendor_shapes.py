"""SendGrid without a template sends the email itself; Klaviyo keeps the payload's own keys; the
SMTP and SendGrid adapters carry the one-click unsubscribe headers of a rendered email."""

from __future__ import annotations

import dataclasses
from email import message_from_bytes

import pytest

from providers.base import OutboundMessage, ProviderError
from providers.registry import ProviderRegistry
from tests.provider_server import ProviderServer, Reply
from tests.providers.test_push_and_smtp import Mailbox, smtp_server  # noqa: F401  (fixture)
from tests.providers.util import message

UNSUBSCRIBE = "https://track.shop.example/t/u/" + "eyJrIjoic25kXzEiLCJ1IjoidXNyXzEifQ" * 3 + ".c2lnbmF0dXJlMTIzNDU2"


def sendgrid_cfg(server: ProviderServer, **more: str) -> dict[str, str]:
    return {"api_key": "SG.key", "from_email": "shop@example.com", "base_url": server.url(), **more}


def journey_email(msg: OutboundMessage) -> OutboundMessage:
    """A message as delivery hands it over for a journey email: with its unsubscribe link."""
    return dataclasses.replace(msg, unsubscribe_url=UNSUBSCRIBE)


async def test_sendgrid_without_template_sends_subject_and_content(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """No template: the payload's subject and text/html become SendGrid's subject and content
    (text/plain first), the send key stays in custom_args; no template fields are sent."""
    fresh_provider.default("/v3/mail/send", Reply(202, "", headers={"X-Message-Id": "sg-2"}))
    payload = {"subject": "Your\ncart", "html": "<p>2 items</p>", "text": "2 items", "to": "jane@example.com"}
    resp = await registry.for_kind("sendgrid").send(message(sendgrid_cfg(fresh_provider), payload, key="snd_nt"))
    assert resp.message_id == "sg-2"
    assert fresh_provider.to("/v3/mail/send")[0].json() == {
        "personalizations": [{"to": [{"email": "jane@example.com"}], "custom_args": {"rejoin_send_key": "snd_nt"}}],
        "from": {"email": "shop@example.com"},
        "subject": "Your cart",
        "content": [{"type": "text/plain", "value": "2 items"}, {"type": "text/html", "value": "<p>2 items</p>"}],
    }
    # A SendGrid-shaped `content` list is taken as written (text/plain still first).
    parts = [{"type": "text/html", "value": "<b>x</b>"}, {"type": "text/plain", "value": "x"}]
    shaped = {"subject": "Hi", "content": parts}
    await registry.for_kind("sendgrid").send(message(sendgrid_cfg(fresh_provider), shaped))
    sent = fresh_provider.to("/v3/mail/send")[1].json()
    assert sent["content"] == [{"type": "text/plain", "value": "x"}, {"type": "text/html", "value": "<b>x</b>"}]


async def test_sendgrid_without_template_or_content_fails_before_calling(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """Neither a template nor a subject and a body: a permanent failure naming what is missing,
    and SendGrid is not called (it would answer 400 to every such send)."""
    fresh_provider.default("/v3/mail/send", Reply(202, ""))
    for payload, missing in (({"firstName": "Jane"}, "subject and body"), ({"subject": "Hi"}, "body"),
                             ({"html": "<p>x</p>"}, "subject")):  # fmt: skip
        with pytest.raises(ProviderError) as err:
            await registry.for_kind("sendgrid").send(message(sendgrid_cfg(fresh_provider), payload))
        assert not err.value.retryable and f"no SendGrid template and no {missing}" in err.value.message
    assert fresh_provider.to("/v3/mail/send") == []
    # A template in the payload (or the integration) keeps the template shape.
    await registry.for_kind("sendgrid").send(message(sendgrid_cfg(fresh_provider), {"template_id": "d-1", "a": 1}))
    sent = fresh_provider.to("/v3/mail/send")[0].json()
    assert sent["template_id"] == "d-1" and sent["personalizations"][0]["dynamic_template_data"] == {"a": 1}
    assert "subject" not in sent and "content" not in sent


async def test_sendgrid_carries_one_click_unsubscribe_headers(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """A rendered journey email's unsubscribe link goes in `headers`, with a template or without."""
    fresh_provider.default("/v3/mail/send", Reply(202, ""))
    want = {"List-Unsubscribe": f"<{UNSUBSCRIBE}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    sendgrid = registry.for_kind("sendgrid")
    await sendgrid.send(journey_email(message(sendgrid_cfg(fresh_provider, template_id="d-9"), {"a": 1})))
    await sendgrid.send(journey_email(message(sendgrid_cfg(fresh_provider), {"subject": "s", "text": "t"})))
    first, second = (r.json() for r in fresh_provider.to("/v3/mail/send"))
    assert first["headers"] == want and first["personalizations"][0]["dynamic_template_data"] == {"a": 1}
    assert second["headers"] == want
    # A message without a link (a test call) has no headers.
    await registry.for_kind("sendgrid").send(message(sendgrid_cfg(fresh_provider), {"subject": "s", "text": "t"}))
    assert "headers" not in fresh_provider.to("/v3/mail/send")[2].json()


async def test_smtp_carries_one_click_unsubscribe_headers(
    registry: ProviderRegistry, smtp_server: tuple[Mailbox, int]  # noqa: F811
) -> None:
    """SMTP: List-Unsubscribe as one unfolded `<url>` (no encoded-words), and List-Unsubscribe-Post."""
    box, port = smtp_server
    cfg = {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "shop@shop.example"}
    await registry.for_kind("smtp").send(journey_email(message(cfg, {"subject": "Your cart", "text": "2 items"})))
    mail = message_from_bytes(box.messages[-1][2])
    assert mail["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    await registry.for_kind("smtp").send(message(cfg, {"subject": "Test call", "text": "x"}))
    assert message_from_bytes(box.messages[-1][2])["List-Unsubscribe"] is None


async def test_klaviyo_keeps_payload_campaign_and_step(
    registry: ProviderRegistry, fresh_provider: ProviderServer
) -> None:
    """The payload's own `campaign` / `step` are not overwritten; Rejoin's names are under
    `rejoin_campaign` / `rejoin_step`, and still under `campaign` / `step` when the payload has none."""
    fresh_provider.default("/api/events", Reply(202, ""))
    cfg = {"api_key": "pk_1", "base_url": fresh_provider.url()}
    await registry.for_kind("klaviyo").send(message(cfg, {"campaign": "summer-sale", "step": 3, "x": 1}))
    await registry.for_kind("klaviyo").send(message(cfg, {"x": 2}))
    own, plain = (r.json()["data"]["attributes"]["properties"] for r in fresh_provider.to("/api/events"))
    assert own == {"campaign": "summer-sale", "step": 3, "x": 1,
                   "rejoin_campaign": "Cart Reminder", "rejoin_step": "Reminder"}  # fmt: skip
    assert plain == {"campaign": "Cart Reminder", "step": "Reminder", "x": 2,
                     "rejoin_campaign": "Cart Reminder", "rejoin_step": "Reminder"}  # fmt: skip
