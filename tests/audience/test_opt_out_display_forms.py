"""An email opt-out written in a display form opts out the address inside it.

"Cart Zero <cart0@example.com>" (a mail client's or a CRM export's form) answered `opted_out` but
stored a new row under the whole string's hash, and cart0@example.com stayed opted in: the person
who unsubscribed kept getting mail (a trial). A row stored under such a form before opt-ins took
one plain address is opted out as well."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select

from domain.events import email_hash
from security.crypto import SecretBox
from settings import Settings
from store.engine import Store
from store.tables import OptIn, now_utc
from tests.audience.test_opt_in_api import _opt
from tests.helpers import SectionKeys, add_integration


def _opted_in(store: Store, section: SectionKeys, value: str) -> bool | None:
    with store.session() as s:
        row = s.exec(select(OptIn).where(OptIn.section_id == section.id, OptIn.value_hash == email_hash(value))).first()
        return None if row is None else row.opted_in


@pytest.mark.parametrize("written", ["Cart Zero <{a}>", "{name} @example.com", '"Zero, Cart" <{a}>', "  {A}  "])
async def test_an_opt_out_in_a_display_form_opts_out_the_address(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, written: str
) -> None:
    await add_integration(api, section)
    name = "cart0-" + section.id[-6:]
    address = f"{name}@example.com"
    assert (await _opt(api, section, "email", "opt-in", "email", address)).status_code == 200
    value = written.format(a=address, A=address.upper(), name=name)
    r = await _opt(api, section, "email", "opt-out", "email", value)
    assert r.status_code == 200 and r.json()["status"] == "opted_out", r.text
    assert _opted_in(store, section, address) is False
    if value.strip().lower() != address:
        assert _opted_in(store, section, value.strip()) is None  # no row of its own for the display form


async def test_a_row_stored_under_a_display_form_is_opted_out_with_the_address(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings
) -> None:
    box = SecretBox(settings.secret_keys)
    await add_integration(api, section)
    stored = "Jane <jane@x.example>"
    with store.session() as s:  # as opt-ins stored it before they took one plain address
        s.add(OptIn(section_id=section.id, channel="email", identifier_type="email", value_hash=email_hash(stored),
                    value_enc=box.encrypt(stored), opted_in=True, updated_at=now_utc()))  # fmt: skip
    r = await _opt(api, section, "email", "opt-out", "email", stored)
    assert r.status_code == 200 and r.json()["status"] == "opted_out", r.text
    assert _opted_in(store, section, stored) is False
    assert _opted_in(store, section, "jane@x.example") is False  # recorded: a later list or send sees it
