"""Identity merges and the campaign report: a device's push hits follow it into the person it logs
in as, its tracking tokens keep working, and a purchase it made anonymously stays unattributed."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment

from domain.tracking import Signer
from settings import Settings
from store.engine import Store
from store.tables import Event, Send
from store.tracking_tables import TrackingHit
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    journey_result,
    login,
    new_dyid,
    outbox,
    purchase,
    reachable_user,
    step,
)
from tests.tracking.test_tracking_api import age_send

FAR = datetime(2100, 1, 1, tzinfo=UTC)  # sends carry (skipped-ahead) workflow time
SINCE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # before every test's cohorts
PAYLOAD = {"title": "Your cart", "trackingData": "${Push tracking data}"}


async def _user_id(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> str:
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _totals(api: httpx.AsyncClient, sec: SectionKeys, cid: str, *, counters: bool = True) -> dict[str, Any]:
    """The report's totals from the pre-aggregated counters (a range of whole hours), or else from
    the raw computation (the default range starts mid-hour, at the campaign's creation)."""
    params = {"to": FAR.isoformat(), **({"from": SINCE.isoformat()} if counters else {})}
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=sec.mgmt, params=params)
    assert r.status_code == 200, r.text
    return dict(r.json()["totals"])


def _send_of(store: Store, cid: str, uid: str) -> str:
    with store.session() as s:
        (key,) = s.exec(select(Send.key).where(Send.campaign_id == cid, Send.user_id == uid)).all()
    age_send(store, key)  # a tap right after delivery would count as a bot
    return str(key)


async def _token(api: httpx.AsyncClient, sec: SectionKeys, send_key: str) -> str:
    """The `rjt` push tracking token the recipient's app received in the payload."""
    (msg,) = [m for m in await outbox(api, sec) if m["send_key"] == send_key]
    return str(msg["payload"]["trackingData"]["rjt"])


async def _engage(api: httpx.AsyncClient, sec: SectionKeys, dyid: str, rjt: str, *types: str) -> dict[str, Any]:
    engagements = [{"type": t, "trackingData": {"rjt": rjt}} for t in types]
    r = await api.post("/v2/collect/user/engagement", headers=sec.ing,
                       json={"user": {"dyid": dyid}, "engagements": engagements})  # fmt: skip
    assert r.status_code == 202, r.text
    return dict(r.json())


async def _anonymous_push_device(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, cid: str
) -> tuple[str, str]:
    """An anonymous app-push device that carts and gets the campaign's push: (dyid, user id)."""
    dyid = new_dyid()
    optin = {"name": "Opt-in", "properties": {"dyType": "message-optin-v1", "pushID": "tok-" + secrets.token_hex(6),
                                              "channelType": "APP_PUSH"}}  # fmt: skip
    await collect(api, sec, dyid, optin, add_to_cart("sku-1", 30.0))
    uid = await _user_id(api, sec, dyid)
    result = await journey_result(env.client, sec, cid, uid)
    assert [d.outcome for d in result.decisions] == ["sent"], result.decisions
    return dyid, uid


async def test_push_hits_follow_a_device_into_the_person_it_logs_in_as(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, settings: Settings, section: SectionKeys
) -> None:
    await add_integration(api, section, channel="app_push")
    spec = cart_campaign(channel_priority=["app_push"], steps=[step("Push", channels=("app_push",), payload=PAYLOAD)])
    cid = await create_campaign(api, section, spec)
    devices = [await _anonymous_push_device(api, env, section, cid) for _ in range(2)]
    tokens = {}
    for dyid, uid in devices:
        tokens[uid] = await _token(api, section, _send_of(store, cid, uid))
        assert await _engage(api, section, dyid, tokens[uid], "PN_IMP", "PN_CLICK") == {"recorded": 2, "ignored": 0, "warnings": []}
    for counters in (True, False):
        totals = await _totals(api, section, cid, counters=counters)
        assert (totals["impressions"], totals["clicks"]) == (2, 2), (counters, totals)

    # Device 1 logs in as a known person: merged into them, with its sends and hits.
    (dyid1, anon), (_, other) = devices
    person_dyid = new_dyid()
    await collect(api, section, person_dyid, login(email_for(person_dyid)))
    person = await _user_id(api, section, person_dyid)
    await collect(api, section, dyid1, login(email_for(person_dyid)))
    assert await _user_id(api, section, dyid1) == person
    with store.session() as s:
        moved = s.exec(select(TrackingHit.user_id).where(TrackingHit.campaign_id == cid)).all()
    assert sorted(moved) == sorted([person, person, other, other])
    for counters in (True, False):
        totals = await _totals(api, section, cid, counters=counters)
        assert (totals["impressions"], totals["clicks"]) == (2, 2), (counters, totals)

    # The push the device got before logging in still records (its token names the merged id) ...
    assert await _engage(api, section, dyid1, tokens[anon], "PN_CLICK") == {"recorded": 1, "ignored": 0, "warnings": []}
    with store.session() as s:
        last = s.exec(select(TrackingHit).order_by(col(TrackingHit.id).desc())).first()
    assert last is not None and last.user_id == person
    # ... but a token naming an unrelated user still does not count for the send.
    send_key = _send_of(store, cid, person)
    claims = {"k": send_key, "u": other, "s": section.id, "i": int(time.time())}
    foreign = Signer(settings.secret_keys).sign("p", claims)
    ignored = await _engage(api, section, dyid1, foreign, "PN_CLICK")
    assert (ignored["recorded"], [w["code"] for w in ignored["warnings"]]) == (0, ["UNKNOWN_SEND"]), ignored

    # The person buys after the tap: attributed to the campaign.
    await collect(api, section, dyid1, purchase([("sku-1", 30.0)], tx="order-1"))
    for counters in (True, False):
        totals = await _totals(api, section, cid, counters=counters)
        got = (totals["impressions"], totals["clicks"], totals["total_clicks"], totals["purchases"], totals["revenue"])
        assert got == (2, 2, 3, 1, 30), (counters, totals)  # a 2nd tap on the same push: 1 clicked send, 3 taps


async def test_an_anonymous_purchase_stays_unattributed_after_the_device_logs_in(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    await add_integration(api, section)
    payload = {"to": "${User identifier}", "trackingData": "${Push tracking data}"}
    cid = await create_campaign(api, section, cart_campaign(steps=[step("Mail", payload=payload)]))
    dyid, person = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1", 40.0))
    result = await journey_result(env.client, section, cid, person)
    assert [d.outcome for d in result.decisions] == ["sent"], result.decisions
    rjt = await _token(api, section, _send_of(store, cid, person))
    assert await _engage(api, section, dyid, rjt, "PN_CLICK") == {"recorded": 1, "ignored": 0, "warnings": []}

    # A second device buys with no identification, then logs in as the person (a merge): both
    # the counters and the raw computation read whether the buyer was identified at the time.
    other = new_dyid()
    await collect(api, section, other, purchase([("sku-2", 500.0)], tx="anon-1"))
    await collect(api, section, other, login(email_for(dyid)))
    assert await _user_id(api, section, other) == person
    for counters in (True, False):
        totals = await _totals(api, section, cid, counters=counters)
        assert (totals["clicks"], totals["purchases"], totals["revenue"]) == (1, 0, 0), (counters, totals)

    # The person's own purchase, identified when made, is attributed.
    await collect(api, section, dyid, purchase([("sku-1", 40.0)], tx="own-1"))
    for counters in (True, False):
        totals = await _totals(api, section, cid, counters=counters)
        assert (totals["purchases"], totals["revenue"]) == (1, 40), (counters, totals)
    with store.session() as s:
        flags = s.exec(select(Event.transaction_id, Event.identified).where(
            Event.user_id == person, Event.kind == "purchase")).all()  # fmt: skip
    assert sorted(flags) == [("anon-1", False), ("own-1", True)]
