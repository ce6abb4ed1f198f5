"""One email opt-in mails one address: the opt-in API and subscriber lists take one plain address
(`domain/email_address.py`), and the SMTP adapter names its one recipient in the envelope and
refuses a value that is not exactly one address (a row stored before the check).

Before: `postmaster,root,victim@evil.com` was opted in, and `smtp.send_message` read the `To:`
header into one RCPT per address."""

from __future__ import annotations

import smtplib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import select

from domain import subscribers
from domain.email_address import is_email
from providers.base import ProviderError
from providers.registry import ProviderRegistry
from store.engine import Store
from store.tables import OptIn
from tests.helpers import SectionKeys, add_integration
from tests.providers.clients import outbound
from tests.providers.test_push_and_smtp import Mailbox, smtp_server  # noqa: F401
from tests.providers.util import message

LISTS = ["postmaster,root,victim@evil.com", "a@b.com;c@d.com", "Jane <jane@example.com>", '"a b"@example.com',
         "jane@example.com\tx@y.com", "jane\x01@example.com", "a(x)@example.com", "a@b.com:c", "a\\b@c.com",
         "a@[10.0.0.1].x", "jane\x85@example.com"]  # fmt: skip
PLAIN = ["jane@example.com", "first.last+tag@example.co.uk", "o'brien@x.ie", "\u03a3@x.gr"]


@pytest.fixture
async def registry(store: Store) -> AsyncIterator[ProviderRegistry]:
    async with outbound("aiohttp") as http:
        yield ProviderRegistry(store, http, allow_private_urls=True)


def test_one_rule_for_every_plain_email() -> None:
    """The opt-in API, subscriber list rows and the SMTP adapter share `is_email`."""
    for bad in LISTS:
        assert not is_email(bad), bad
        assert subscribers.row_value("email", [bad]) == "not a valid email address", bad
        assert subscribers.parse_lines("email", [bad.encode()], 2, 10).values == [], bad
    for good in PLAIN:
        assert is_email(good), good
        assert subscribers.parse_lines("email", [good.encode()], 2, 10).values == [good.encode()], good


async def test_an_email_opt_in_of_several_addresses_is_422_naming_the_field(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section, "email", kind="outbox")
    for bad in LISTS:
        body = {"identifier": {"type": "email", "value": bad}}
        r = await api.post("/v2/userdata/channels/email/opt-in", json=body, headers=section.ing)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "identifier", "value"], r.text
    with store.session() as s:
        assert s.exec(select(OptIn).where(OptIn.section_id == section.id)).all() == []
    body = {"identifier": {"type": "email", "value": " Jane@Example.com "}}
    r = await api.post("/v2/userdata/channels/email/opt-in", json=body, headers=section.ing)
    assert r.status_code == 200 and r.json()["status"] == "opted_in", r.text
    # A row stored before the check (a list, a display name, a space) can still be opted out.
    for stored in ("postmaster,root,victim@evil.com", "Jane <jane@x.example>", "a b@c.example", "weird, v@x.io"):
        body = {"identifier": {"type": "email", "value": stored}}
        r = await api.post("/v2/userdata/channels/email/opt-out", json=body, headers=section.ing)
        assert r.status_code == 200 and r.json()["status"] == "opted_out", (stored, r.text)
    # Something that is no address at all is still refused, naming the field and the opt-out's rule.
    body = {"identifier": {"type": "email", "value": "no address"}}
    r = await api.post("/v2/userdata/channels/email/opt-out", json=body, headers=section.ing)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "identifier", "value"], r.text
    assert "@" in r.json()["detail"][0]["msg"], r.text


async def test_smtp_refuses_a_recipient_that_is_not_one_address(
    registry: ProviderRegistry, smtp_server: tuple[Mailbox, int]  # noqa: F811
) -> None:
    """A stored list is a permanent failure with no SMTP transaction: no RCPT for anyone."""
    box, port = smtp_server
    cfg = {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "shop@shop.example"}
    for bad in LISTS:
        with pytest.raises(ProviderError) as err:
            await registry.for_kind("smtp").send(message(cfg, {"subject": "Hi", "text": "x"}, recipient=bad))
        assert not err.value.retryable, bad
    assert box.messages == []


async def test_smtp_envelope_names_the_one_recipient(
    registry: ProviderRegistry, smtp_server: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """`send_message` is given the recipient (`to_addrs`), not left to split the To header."""
    box, port = smtp_server
    calls: list[dict[str, Any]] = []
    original = smtplib.SMTP.send_message

    def spy(self: smtplib.SMTP, msg: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(self, msg, *args, **kwargs)

    monkeypatch.setattr(smtplib.SMTP, "send_message", spy)
    cfg = {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "shop@shop.example"}
    await registry.for_kind("smtp").send(message(cfg, {"subject": "Hi", "text": "x"}, recipient="jane@example.com"))
    assert calls == [{"to_addrs": ["jane@example.com"]}]
    assert [rcpts for _, rcpts, _ in box.messages] == [["jane@example.com"]]
