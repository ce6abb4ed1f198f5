"""A send whose first attempt may have been delivered (the answer was lost) and whose retry the
provider refuses (e.g. a 400 for the reused key) is not sent again on the next channel: the user
could get both. Its cap slot stays taken, and the failure says why; a refusal with no earlier
doubt still falls back as before."""

from __future__ import annotations

import secrets

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import CapReservation, Send
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
from tests.provider_server import ProviderServer, Reply


async def _email_then_sms(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, provider: ProviderServer, *replies: Reply
) -> tuple[str, list[Send]]:
    path = "/esp/" + secrets.token_hex(4)
    provider.script(path, *replies)
    await add_integration(api, sec, kind="custom_http", config={"url": provider.url(path)})
    await add_integration(api, sec, "sms")  # the built-in outbox: what falls back is seen there
    spec = cart_campaign(wait="PT1H", channel_priority=["email", "sms"], steps=[step("Nudge", channels=("email", "sms"))])
    cid = await create_campaign(api, sec, spec)
    dyid, uid = await reachable_user(api, sec, phone="+15551230000")
    await collect(api, sec, dyid, add_to_cart("sku-1"))
    result = await journey_result(env.client, sec, cid, uid)
    return result.journey_id, [*await outbox(api, sec)]


async def test_a_refusal_after_a_lost_answer_does_not_fall_back(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    journey_id, fallen_back = await _email_then_sms(
        api, env, section, fresh_provider, Reply(200, {"id": "m1"}, truncate=True), Reply(400, {"error": "key reused"})
    )
    assert fallen_back == []  # no SMS: the email may well have arrived
    with store.session() as s:
        (send,) = s.exec(select(Send).where(Send.journey_id == journey_id)).all()
        assert (send.channel, send.status, send.possible_duplicate) == ("email", "failed", True)
        assert "may have been delivered" in (send.provider_response or "")
        slot = s.get(CapReservation, send.key)
        assert slot is not None and not slot.released


async def test_a_refusal_with_no_earlier_doubt_still_falls_back(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    journey_id, fallen_back = await _email_then_sms(api, env, section, fresh_provider, Reply(400, {"error": "bad"}))
    assert len(fallen_back) == 1
    with store.session() as s:
        sends = {x.channel: x for x in s.exec(select(Send).where(Send.journey_id == journey_id)).all()}
        assert (sends["email"].status, sends["sms"].status) == ("failed", "accepted")
        slot = s.get(CapReservation, sends["email"].key)
        assert slot is not None and slot.released
