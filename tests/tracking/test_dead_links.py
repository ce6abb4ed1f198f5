"""Link lifetime and dead links: expired, tampered and unknown links never reach their target and
never count; they go to the section's fallback URL or a neutral page. Section link settings API."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from domain.tracking import Signer
from settings import Settings
from store.engine import Store
from store.tables import Send
from store.tracking_tables import ShortLink
from tests.helpers import (
    ADMIN,
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    make_section,
    outbox,
    reachable_user,
    step,
)
from tests.tracking.test_tracking_api import HUMAN, age_send, hits, path, products

FALLBACK = "https://shop.example/home"
NEUTRAL = "This link has expired"


async def one_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, channel: str, payload: dict[str, Any]
) -> tuple[dict[str, Any], str, str]:
    """Run a one-step cart campaign on `channel` for a new user: (the outbox message, user id, dyid)."""
    await add_integration(api, sec)
    if channel == "sms":
        await add_integration(api, sec, channel="sms")
    await products(api, sec, {"sku": "s1", "name": "Shoe", "url": "https://shop.example/p/s1"})
    spec = cart_campaign(channel_priority=[channel], steps=[step("One", channels=(channel,), payload=payload)])
    cid = await create_campaign(api, sec, spec)
    dyid, uid = await reachable_user(api, sec, phone="+15550009876" if channel == "sms" else None)
    await collect(api, sec, dyid, add_to_cart("s1", 10.0))
    result = await journey_result(env.client, sec, cid, uid)
    assert [d.outcome for d in result.decisions] == ["sent"], result
    (msg,) = await outbox(api, sec)
    return msg, uid, dyid


async def set_links(api: httpx.AsyncClient, sec: SectionKeys, **fields: Any) -> httpx.Response:
    return await api.patch("/api/v1/section", json=fields, headers=sec.mgmt)


def is_neutral(r: httpx.Response) -> bool:
    return (
        r.status_code == 200
        and "location" not in r.headers
        and NEUTRAL in r.text
        and r.headers["cache-control"].startswith("no-store")
    )


def is_fallback(r: httpx.Response) -> bool:
    return (
        r.status_code == 302 and r.headers["location"] == FALLBACK and r.headers["cache-control"].startswith("no-store")
    )


def shift_send(store: Store, send_key: str, by: timedelta) -> None:
    with store.session() as s:
        send = s.get(Send, send_key)
        assert send is not None
        send.created_at += by
        s.add(send)


async def test_dead_email_links_pixels_and_push_tokens_record_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, settings: Settings, section: SectionKeys
) -> None:
    """Expired (signed issue time, or the send's time for links without one) and tampered links:
    neutral page, then the section's fallback once set; pixel always a GIF; nothing recorded."""
    payload = {"link": "${Items in cart|url|item1}", "px": "${Tracking pixel url}", "push": "${Push tracking data}"}
    msg, uid, _ = await one_send(api, env, section, "email", payload)
    key, body = msg["send_key"], msg["payload"]
    age_send(store, key)
    signer = Signer(settings.secret_keys)
    old = int(time.time()) - int(timedelta(days=91).total_seconds())
    expired_click = signer.sign("c", {"k": key, "u": uid, "t": "https://shop.example/p/s1", "s": section.id, "i": old})
    undated_click = signer.sign(
        "c", {"k": key, "u": uid, "t": "https://shop.example/p/s1"}
    )  # minted before links had `i`
    token = path(body["link"]).rsplit("/", 1)[1]
    tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]  # the signature changed
    garbled = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]  # the body changed: no section to read
    forged = Signer(["attacker"]).sign("c", {"k": key, "u": uid, "t": "https://evil.example/", "s": section.id})

    r = await api.get(path(body["link"]), headers=HUMAN)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/p/s1"
    r = await api.get(f"/t/c/{undated_click}", headers=HUMAN)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/p/s1"
    assert is_neutral(await api.get(f"/t/c/{expired_click}", headers=HUMAN))
    assert is_neutral(await api.get(f"/t/c/{tampered}", headers=HUMAN))
    assert is_neutral(await api.get("/t/c/not-a-token", headers=HUMAN))

    assert (await set_links(api, section, fallback_url=FALLBACK)).status_code == 200
    assert is_fallback(await api.get(f"/t/c/{tampered}", headers=HUMAN))
    assert is_fallback(await api.get(f"/t/c/{forged}", headers=HUMAN))
    assert is_neutral(await api.get(f"/t/c/{garbled}", headers=HUMAN))
    assert is_fallback(await api.get(f"/t/c/{expired_click}", headers=HUMAN))
    assert is_fallback(await api.head(f"/t/c/{expired_click}", headers=HUMAN))
    shift_send(store, key, -timedelta(days=100))  # the send (hence the undated link) is now 100 days old
    assert is_fallback(await api.get(f"/t/c/{undated_click}", headers=HUMAN))
    r = await api.get(path(body["link"]), headers=HUMAN)  # its own signed issue time is recent: alive
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/p/s1"

    expired_pixel = signer.sign("o", {"k": key, "u": uid, "s": section.id, "i": old})
    for url in (f"/t/o/{expired_pixel}.gif", path(body["px"])):
        r = await api.get(url, headers=HUMAN)
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif" and r.content.startswith(b"GIF89a")
    expired_push = signer.sign("p", {"k": key, "u": uid, "s": section.id, "i": old})
    r = await api.post("/v2/collect/user/engagement", headers=section.ing,
                       json={"engagements": [{"type": "PN_CLICK", "trackingData": {"rjt": expired_push}},
                                             {"type": "PN_CLICK", "trackingData": body["push"]}]})  # fmt: skip
    assert r.status_code == 202 and r.json()["recorded"] == 1 and r.json()["ignored"] == 1, r.text
    assert [w["code"] for w in r.json()["warnings"]] == ["INVALID_TRACKING_TOKEN"]  # expired

    got = [(h.kind, h.source, h.bot_reason) for h in hits(store, key)]
    implied = ("impression", "implied", None)  # the open the first click implies (no open before it)
    assert got == [("click", "link", None), implied, *[("click", "link", None)] * 2, ("impression", "pixel", None),
                   ("click", "push", None)]  # fmt: skip


async def test_sms_short_links_expire_to_the_fallback(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """A short code older than the lifetime goes to the fallback and is not counted; an unknown
    code (no section to ask) gets the neutral page."""
    msg, _, _ = await one_send(api, env, section, "sms", {"text": "Back? ${Items in cart|url|item1}"})
    age_send(store, msg["send_key"])
    link = path(msg["payload"]["text"].split()[1])
    assert (await set_links(api, section, fallback_url=FALLBACK)).status_code == 200
    r = await api.get(link, headers=HUMAN)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/p/s1"
    with store.session() as s:
        row = s.exec(select(ShortLink).where(ShortLink.send_key == msg["send_key"])).one()
        row.created_at -= timedelta(days=3650)
        s.add(row)
    assert is_fallback(await api.get(link, headers=HUMAN))
    assert is_neutral(await api.get("/s/ZZZZZZZZZZ", headers=HUMAN))
    assert is_neutral(await api.get("/s/x", headers=HUMAN))
    assert [(h.kind, h.source) for h in hits(store, msg["send_key"])] == [("click", "short")]


async def test_section_link_settings_are_validated_and_round_trip(api: httpx.AsyncClient) -> None:
    """fallback_url, link_domains, legacy_section_id: set at creation or by PATCH /section,
    validated (422 naming the field, 409 for a legacy id another section holds), null clears."""
    legacy = f"dy{time.time_ns()}"
    domains = ["Shop.Example", "shop.example", "www.shop2.example."]
    body = {"name": "with links", "fallback_url": FALLBACK, "link_domains": domains, "legacy_section_id": legacy}
    r = await api.post("/api/v1/sections", headers=ADMIN, json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["fallback_url"], created["link_domains"], created["legacy_section_id"]) == (
        FALLBACK, ["shop.example", "www.shop2.example"], legacy)  # fmt: skip
    sec = SectionKeys(created["id"], created["management_key"]["key"], created["ingestion_key"]["key"])

    for field, value in [("fallback_url", "javascript:alert(1)"), ("fallback_url", "https://u:p@shop.example/"),
                         ("fallback_url", "/home"), ("link_domains", ["https://shop.example"]),
                         ("link_domains", ["shop.example:8080"]), ("link_domains", ["*.shop.example"]),
                         ("legacy_section_id", "a/b"), ("legacy_section_id", "")]:  # fmt: skip
        r = await set_links(api, sec, **{field: value})
        assert r.status_code == 422 and field in r.json()["detail"][0]["loc"], (field, value, r.text)
    other = await make_section(api, "other")
    r = await set_links(api, other, legacy_section_id=legacy)
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "legacy_section_id"]
    r = await set_links(api, other, legacy_section_id=sec.id)  # another section's own id: ambiguous too
    assert r.status_code == 409

    r = await set_links(api, sec, fallback_url=None)
    assert (
        r.status_code == 200
        and r.json()["fallback_url"] is None
        and r.json()["link_domains"] == ["shop.example", "www.shop2.example"]
    )
    r = await set_links(api, sec, link_domains=[])
    assert r.status_code == 200 and r.json()["link_domains"] == [] and r.json()["legacy_section_id"] == legacy
    r = await api.get("/api/v1/section", headers=sec.mgmt)
    assert (r.json()["fallback_url"], r.json()["link_domains"], r.json()["legacy_section_id"]) == (None, [], legacy)
    listed = {x["id"]: x for x in (await api.get("/api/v1/sections", headers=ADMIN)).json()}
    assert listed[sec.id]["legacy_section_id"] == legacy and listed[other.id]["fallback_url"] is None


async def test_a_flood_from_one_address_is_answered_but_not_recorded(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, settings: Settings, section: SectionKeys
) -> None:
    """Past its recording budget an address still gets every redirect and GIF (never a 429), but
    its hits are no longer stored; another address is recorded as usual."""
    from api.main import create_app

    payload = {"link": "${Items in cart|url|item1}", "px": "${Tracking pixel url}"}
    msg, _, _ = await one_send(api, env, section, "email", payload)
    key, body = msg["send_key"], msg["payload"]
    age_send(store, key)
    strict = settings.model_copy(update={"tracking_hits_per_second": 0.001, "tracking_hits_burst": 3})
    app = create_app(strict, store=store, temporal=env.client)
    answers = []
    for client_ip in ("203.0.113.7",) * 10 + ("198.51.100.9",):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://rejoin.test") as c:
            click = await c.get(path(body["link"]), headers=HUMAN)
            pixel = await c.get(path(body["px"]), headers=HUMAN)
        answers.append((click.status_code, click.headers.get("location"), pixel.headers["content-type"]))
    assert answers == [(302, "https://shop.example/p/s1", "image/gif")] * 11
    recorded = hits(store, key)
    # burst 3 for the flooding address (click and the open it implies, pixel, click), then one click + one
    # pixel from the other
    assert [h.kind for h in recorded] == ["click", "impression", "impression", "click", "click", "impression"], recorded
