"""A hit on a send the provider has not accepted yet is a machine's (domain/tracking.py
`UNACCEPTED_HIT_WINDOW`). A report trial's vendor took 3 s to accept and its link scanner opened the
first link 1.5 s into the call: the hit was stored 1.49 s before the acceptance, counted as the
send's first human click (an implied open too) and started attribution (a purchase and 50 EUR to
the variation). The 1-second rule measured from the send row's in-flight time, not an acceptance."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import httpx
from temporalio.testing import WorkflowEnvironment

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
    outbox,
    reachable_user,
    step,
)
from tests.tracking.test_tracking_api import HUMAN, hits, path, products


def _set(store: Store, send_key: str, status: str, ago: timedelta) -> None:
    with store.session() as s:
        send = s.get(Send, send_key)
        assert send is not None
        send.status, send.updated_at = status, send.updated_at - ago
        s.add(send)


async def test_a_click_while_the_send_is_not_accepted_yet_is_no_human_click(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    await add_integration(api, section)
    await products(api, section, {"sku": "b1", "name": "Bag", "url": "https://shop.example/p/b1"})
    cart = quote("https://shop.example/cart", safe="")
    payload = {"html": f'<a href="${{Tracking link}}{cart}">Go</a>'}
    cid = await create_campaign(api, section, cart_campaign(steps=[step("First", payload=payload)]))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("b1", 50.0))
    assert [d.outcome for d in (await journey_result(env.client, section, cid, uid)).decisions] == ["sent"]
    (msg,) = await outbox(api, section)
    send_key, link = msg["send_key"], path(msg["payload"]["html"].split('"')[1])

    # The provider call still running, its last attempt 1.5 s ago: past the 1-second rule, yet a machine.
    _set(store, send_key, "in_flight", timedelta(seconds=1.5))
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    # Being retried after a vendor's 503: the message has not reached anyone either.
    _set(store, send_key, "retrying", timedelta(seconds=30))
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    # In flight for minutes: an acceptance never recorded (a worker killed after the call); a person may read it.
    _set(store, send_key, "in_flight", timedelta(minutes=5))
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    # Accepted long ago: a person.
    _set(store, send_key, "accepted", timedelta(minutes=5))
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    clicks = [h for h in hits(store, send_key) if h.kind == "click"]
    assert [h.bot_reason for h in clicks] == ["before_accepted", "before_accepted", None, None]
    assert [h.first_of_send for h in clicks] == [False, False, True, False]  # the report's click
