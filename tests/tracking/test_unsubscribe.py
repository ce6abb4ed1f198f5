"""One-click unsubscribe (RFC 8058) end to end: a journey email through SMTP carries the
List-Unsubscribe headers and `${Unsubscribe link}`; a POST opts the user out of email and the next
campaign finds them `not_opted_in`; a GET alone, a tampered, forged or expired token change nothing.
The journeys API shows the send's provider message id."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from email import message_from_bytes, policy
from urllib.parse import urlsplit

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from domain.tracking import Signer
from settings import Settings
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
from tests.providers.test_push_and_smtp import Mailbox, smtp_server  # noqa: F401  (fixture)
from tests.tracking.test_tracking_api import HUMAN

PAYLOAD = {"subject": "Your cart", "html": '<p>Come back</p><p><a href="${Unsubscribe link}">Unsubscribe</a></p>'}


def email_opt_ins(store: Store, section_id: str) -> list[OptIn]:
    with store.session() as s:
        return list(s.exec(select(OptIn).where(OptIn.section_id == section_id, OptIn.channel == "email")).all())


def opted_in(store: Store, section_id: str) -> bool:
    return any(r.opted_in for r in email_opt_ins(store, section_id))


async def test_one_click_unsubscribe_end_to_end(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, settings: Settings,
    smtp_server: tuple[Mailbox, int],  # noqa: F811
) -> None:  # fmt: skip
    box, port = smtp_server
    await add_integration(api, section, "email", kind="smtp", config={
        "host": "127.0.0.1", "port": port, "security": "none", "from_email": "shop@shop.example"})  # fmt: skip
    first = await create_campaign(api, section, cart_campaign(steps=[step("Nudge", payload=PAYLOAD)]))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, first, uid)).sent == 1

    mail = message_from_bytes(box.messages[-1][2], policy=policy.default)
    header = mail["List-Unsubscribe"]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<https?://[^<>\s]+/t/u/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+>", header), header
    url = header[1:-1]
    html = next(str(p.get_content()) for p in mail.walk() if p.get_content_type() == "text/html")
    assert f'href="{url}"' in html, html  # `${Unsubscribe link}`: the same link, not wrapped for click tracking
    token = urlsplit(url).path.rsplit("/", 1)[1]
    assert "@" not in token and "example.com" not in Signer.unverified(token).__repr__()  # no address in it

    # The journeys API names the send's provider message id (the SMTP Message-ID here).
    r = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
    assert r.status_code == 200, r.text
    (send,) = [s for j in r.json() for s in j["sends"]]
    assert send["provider_message_id"] == mail["Message-ID"]

    path = urlsplit(url).path
    # A GET (a link scanner, or a person before confirming) only shows the confirmation page.
    page = await api.get(path, headers=HUMAN)
    assert page.status_code == 200 and '<form method="post">' in page.text and "One-Click" in page.text
    assert (await api.head(path, headers=HUMAN)).status_code == 200
    assert opted_in(store, section.id)

    # Tampered, forged and expired tokens change nothing.
    tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    data = Signer.unverified(token)
    assert data is not None and data["u"] == uid and data["s"] == section.id
    forged = Signer(["attacker"]).sign("u", data)
    old = int(time.time()) - int((settings.link_ttl + timedelta(days=1)).total_seconds())
    expired = Signer(settings.secret_keys).sign("u", {**data, "i": old})
    as_click = Signer(settings.secret_keys).sign("c", {**data, "t": "https://shop.example/"})  # another kind
    for bad in (tampered, forged, expired, as_click, "not-a-token"):
        r = await api.post(f"/t/u/{bad}", content="List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert r.status_code == 400 and "no longer valid" in r.text, (bad, r.text)
        assert "no longer valid" in (await api.get(f"/t/u/{bad}", headers=HUMAN)).text
    assert opted_in(store, section.id)
    # A preview's link (no send key) works and changes nothing.
    preview = Signer(settings.secret_keys).sign("u", {**data, "k": ""})
    r = await api.post(f"/t/u/{preview}")
    assert r.status_code == 200 and "preview" in r.text and opted_in(store, section.id)

    # The one-click POST (RFC 8058) opts the user out of email; a repeat is harmless.
    for _ in range(2):
        r = await api.post(path, content="List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert r.status_code == 200 and "unsubscribed" in r.text
    rows = email_opt_ins(store, section.id)
    assert rows and not any(r.opted_in for r in rows) and {r.source for r in rows} == {"unsubscribe"}

    # The next campaign does not email them.
    second = await create_campaign(api, section, cart_campaign(name="Second", steps=[step("Nudge", payload=PAYLOAD)]))
    sent_before = len(box.messages)
    await collect(api, section, dyid, add_to_cart("sku-2"))
    result = await journey_result(env.client, section, second, uid)
    assert result.sent == 0 and len(box.messages) == sent_before, result
    assert any("not_opted_in" in (d.reason or "") for d in result.decisions), result.decisions
