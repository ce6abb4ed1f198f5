"""An SMS recipient stored as digits alone (subscriber lists synced before phones kept their "+")
is sent in E.164, as the vendor needs it, until the list's next sync stores it with the "+"."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from domain.identifiers import sendable_recipient, stored_phone_as_e164
from security.crypto import SecretBox
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
    outbox,
    reachable_user,
    step,
)


@pytest.mark.parametrize(
    ("stored", "sent"),
    [("15551230000", "+15551230000"), ("+15551230000", "+15551230000"), ("0123", "0123"), ("x1555", "x1555")],
)
def test_stored_phone_as_e164(stored: str, sent: str) -> None:
    assert stored_phone_as_e164(stored) == sent


def test_only_sms_recipients_gain_a_plus() -> None:
    assert sendable_recipient("sms", "15551230000") == "+15551230000"
    assert sendable_recipient("app_push", "15551230000") == "15551230000"


async def test_a_journey_sends_a_bare_digits_phone_with_its_plus(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, settings: Settings, section: SectionKeys
) -> None:
    await add_integration(api, section)
    await add_integration(api, section, "sms")
    cid = await create_campaign(api, section, cart_campaign(channel_priority=["sms"], steps=[step("A", channels=("sms",))]))
    dyid, uid = await reachable_user(api, section, phone="+15551230000")
    box = SecretBox(settings.secret_keys)
    with store.session() as s:  # as an old list sync stored it
        (row,) = s.exec(select(OptIn).where(OptIn.section_id == section.id, OptIn.channel == "sms")).all()
        row.value_enc = box.encrypt("15551230000")
        s.add(row)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    assert [m["recipient"] for m in await outbox(api, section)] == ["+15551230000"]
