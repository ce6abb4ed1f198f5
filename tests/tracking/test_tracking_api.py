"""Messages end to end: rendered sends carry signed links; redirects, pixel, short links, push."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Send
from store.tracking_tables import TrackingHit
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

HUMAN = {"User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15"}


async def products(api: httpx.AsyncClient, sec: SectionKeys, *rows: dict[str, Any]) -> None:
    r = await api.put("/api/v1/products", json=list(rows), headers=sec.mgmt)
    assert r.status_code == 200, r.text


def hits(store: Store, send_key: str) -> list[TrackingHit]:
    with store.session() as s:
        return list(s.exec(select(TrackingHit).where(TrackingHit.send_key == send_key).order_by(TrackingHit.id)).all())  # type: ignore[arg-type]


def age_send(store: Store, send_key: str) -> None:
    """Pretend the message was delivered a minute ago (clicks within 1 s count as bots)."""
    with store.session() as s:
        send = s.get(Send, send_key)
        assert send is not None
        send.updated_at -= timedelta(minutes=1)
        s.add(send)


def path(url: str) -> str:
    return urlsplit(url).path


async def test_email_links_redirect_record_clicks_and_refuse_tampering(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """Product URLs and ${Tracking link} become signed links that 302 and record; a tampered one
    goes to the neutral dead-link page (no fallback set): no redirect to its target, no click."""
    await add_integration(api, section)
    await products(api, section, {"sku": "s1", "name": "Red shoe", "url": "https://shop.example/p/s1",
                                  "attributes": {"lng:fr_FR:name": "Chaussure rouge"}})  # fmt: skip
    cart = quote("https://shop.example/cart?from=mail", safe="")
    payload = {"to": "${User identifier}", "subject": "${Headline}", "item": "${Items in cart|name|item1}",
               "product": "${Items in cart|url|item1}", "html": f'<a href="${{Tracking link}}{cart}">Go</a>${{Tracking pixel}}',
               "push": "${Push tracking data}"}  # fmt: skip
    spec = cart_campaign(steps=[step("First", payload=payload)])
    spec["variations"][0]["variables"] = {"Headline": {"default": "Your cart", "fr": "Votre panier"}}
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("s1", 20.0), locale="fr_FR")
    result = await journey_result(env.client, section, cid, uid)
    assert [d.outcome for d in result.decisions] == ["sent"], result
    (msg,) = await outbox(api, section)
    body = msg["payload"]
    assert body["subject"] == "Votre panier" and body["item"] == "Chaussure rouge"
    assert body["to"].endswith("@example.com") and "@" not in body["product"]
    send_key = msg["send_key"]

    r = await api.get(path(body["product"]), headers=HUMAN)  # immediately after the send: a scanner
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/p/s1"
    age_send(store, send_key)
    href = body["html"].split('"')[1]
    r = await api.get(path(href), headers=HUMAN)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/cart?from=mail"
    assert r.headers["cache-control"].startswith("no-store")
    r = await api.head(path(href), headers=HUMAN)
    assert r.status_code == 302
    r = await api.get(path(href), headers={"User-Agent": "Mozilla/5.0 (compatible; Mimecast Link Scanner)"})
    assert r.status_code == 302

    token = path(href).rsplit("/", 1)[1]
    tampered = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    r = await api.get(f"/t/c/{tampered}", headers=HUMAN)
    assert r.status_code == 200 and "location" not in r.headers and "This link has expired" in r.text

    pixel = body["html"].split('src="')[1].split('"')[0]
    r = await api.get(path(pixel), headers=HUMAN)
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif" and r.content.startswith(b"GIF89a")
    assert "no-cache" in r.headers["cache-control"] and r.headers["pragma"] == "no-cache"
    r = await api.get("/t/o/bogus.token.gif")
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"

    r = await api.post("/v2/collect/user/engagement", headers=section.ing,
                       json={"user": {"dyid": dyid}, "engagements": [{"type": "PN_CLICK", "trackingData": body["push"]},
                                                                     {"type": "PN_CLICK", "trackingData": {"rjt": "x.y"}}]})  # fmt: skip
    assert r.status_code == 202 and r.json()["recorded"] == 1 and r.json()["ignored"] == 1, r.text
    assert [(w["code"], w["field"]) for w in r.json()["warnings"]] == [
        ("INVALID_TRACKING_TOKEN", "engagements.1.trackingData.rjt")
    ]
    dy_shaped = [{"type": "CLICK", "decisionId": "d-1", "variations": [1]}, {"type": "PN_CLICK", "trackingData": {}}]
    r = await api.post("/v2/collect/user/engagement", headers=section.ing,
                       json={"user": {"dyid": dyid}, "engagements": dy_shaped})  # fmt: skip
    assert r.status_code == 202 and r.json()["recorded"] == 0 and r.json()["ignored"] == 2, r.text
    assert [(w["code"], w["field"]) for w in r.json()["warnings"]] == [
        ("UNSUPPORTED_ENGAGEMENT", "engagements.0.type"), ("NO_TRACKING_TOKEN", "engagements.1.trackingData.rjt")
    ]

    got = [(h.kind, h.source, h.bot_reason) for h in hits(store, send_key)]
    assert got == [
        ("click", "link", "too_fast_after_send"),
        ("click", "link", None),
        ("impression", "implied", None),  # the open the first human click implies (no open before it)
        ("click", "link", "head_request"),
        ("click", "link", "scanner_user_agent"),
        ("impression", "pixel", None),
        ("click", "push", None),
    ]
    h = hits(store, send_key)[1]
    assert (h.campaign_id, h.variation_id, h.step_index, h.channel, h.user_id) == (cid, "a", 0, "email", uid)


async def test_sms_links_are_short_tracked_links(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """SMS texts get short first-party links that redirect and record a click."""
    await add_integration(api, section)
    await add_integration(api, section, channel="sms")
    await products(api, section, {"sku": "s2", "name": "Hat", "url": "https://shop.example/p/s2"})
    spec = cart_campaign(channel_priority=["sms"],
                         steps=[step("Text", channels=("sms",), payload={"text": "Back? ${Items in cart|url|item1} Reply STOP"})])  # fmt: skip
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section, phone="+15550001234")
    await collect(api, section, dyid, add_to_cart("s2", 5.0))
    result = await journey_result(env.client, section, cid, uid)
    assert [d.outcome for d in result.decisions] == ["sent"], result
    (msg,) = await outbox(api, section)
    link = msg["payload"]["text"].split()[1]
    code = path(link).rsplit("/", 1)[1]
    assert path(link).startswith("/s/") and len(code) >= 8 and code.isalnum()
    age_send(store, msg["send_key"])
    r = await api.get(path(link), headers=HUMAN)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/p/s2"
    r = await api.get("/s/ZZZZZZZZZZ")
    assert r.status_code == 200 and "location" not in r.headers and "This link has expired" in r.text
    assert [(h.kind, h.source, h.bot) for h in hits(store, msg["send_key"])] == [("click", "short", False)]


async def test_required_variable_missing_skips_step_without_fallback(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """`${!...}` with no value: nothing is sent, the step is recorded with the reason, no fallback."""
    await add_integration(api, section)
    await add_integration(api, section, channel="sms")
    payload = {"subject": "${!Items in cart|name|item1}"}
    spec = cart_campaign(steps=[step("First", channels=("email", "sms"), payload=payload)])
    cid = await create_campaign(api, section, spec)
    dyid, uid = await reachable_user(api, section, phone="+15550001235")
    await collect(api, section, dyid, add_to_cart("unknown-sku", 3.0))
    result = await journey_result(env.client, section, cid, uid)
    assert len(result.decisions) == 1, result.decisions
    assert "required variable ${Items in cart|name|item1} is empty" in (result.decisions[0].reason or "")
    assert result.decisions[0].channel == "email"
    assert await outbox(api, section) == []


async def test_click_then_purchase_is_attributed_in_the_report(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """End to end: send, human click, identified purchase -> one attributed purchase in the report."""
    from datetime import UTC, datetime

    from tests.helpers import purchase

    await add_integration(api, section)
    await products(api, section, {"sku": "s3", "name": "Bag", "url": "https://shop.example/p/s3"})
    cid = await create_campaign(api, section, cart_campaign(steps=[step("First", payload={"link": "${Items in cart|url|item1}"})]))
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("s3", 40.0))
    result = await journey_result(env.client, section, cid, uid)
    assert [d.outcome for d in result.decisions] == ["sent"], result
    (msg,) = await outbox(api, section)
    age_send(store, msg["send_key"])
    assert (await api.get(path(msg["payload"]["link"]), headers=HUMAN)).status_code == 302
    await collect(api, section, dyid, purchase([("s3", 40.0)], tx="order-1"))
    await collect(api, section, dyid, purchase([("s3", 40.0)], tx="order-1"))  # resent by the site: counted once
    far = datetime(2100, 1, 1, tzinfo=UTC).isoformat()  # sends carry (skipped-ahead) workflow time
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params={"to": far})
    assert r.status_code == 200, r.text
    (a,) = r.json()["variations"]
    assert a["users"] == 1 and a["metrics"]["send_requests"]["count"] == 1 and a["metrics"]["clicks"]["count"] == 1
    assert a["metrics"]["purchases"]["count"] == 1 and a["metrics"]["revenue"]["count"] == 40
    # The counters the real write paths kept (enroll, delivery, click, purchase) equal the raw recompute.
    from api.routes.reports import build_report
    from store.campaigns import load_spec
    from store.tables import Campaign

    with store.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        spec, end = load_spec(s, cid, c.version), datetime(2100, 1, 1, tzinfo=UTC)
        for start in (c.created_at, c.created_at.replace(minute=0, second=0, microsecond=0)):
            assert build_report(s, c, spec, start, end) == build_report(s, c, spec, start, end, raw=True)
