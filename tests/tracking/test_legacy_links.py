"""Reconnect's legacy `tremclk`/`tremop` links from emails sent before the migration: followed
only to the section's listed hosts, counted only for a known (campaign, user) send."""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import Send
from tests.helpers import SectionKeys, email_for
from tests.tracking.test_dead_links import FALLBACK, is_fallback, is_neutral, one_send, set_links
from tests.tracking.test_tracking_api import HUMAN, age_send, hits


def tremclk(sec: str, campaign: str, cuid: str, target: str, *, encode: bool = True) -> str:
    """The shape of the Reconnect docs, parent-experience fields included; targetUrl last."""
    return (f"/tremclk/?cuid={quote(cuid, safe='')}&cuidType=ihe&sec={sec}&expId={campaign}&expVer=0&expVisitId="
            f"&mech=0&smech=&va=&pExpId=0&pExpVer=0&pExpVisitId=&pMech=0&pSmech=&pVa="
            f"&targetUrl={quote(target, safe='') if encode else target}")  # fmt: skip


async def test_legacy_clicks_redirect_only_to_listed_hosts_and_count_known_sends(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """Listed host: 302 (encoded or plain target); counted when sec/expId/cuid name a send.
    Other hosts, lookalikes, unknown sections, non-http: never the target, never counted."""
    msg, uid, dyid = await one_send(api, env, section, "email", {"link": "${Items in cart|url|item1}"})
    key = msg["send_key"]
    age_send(store, key)
    with store.session() as s:
        send = s.get(Send, key)
        assert send is not None
        cid = send.campaign_id
    legacy = f"87{time.time_ns()}"
    email = email_for(dyid)
    assert (await set_links(api, section, link_domains=["shop.example"], legacy_section_id=legacy)).status_code == 200

    cart = "https://www.shop.example/cart?a=1&b=2"
    for url in (tremclk(legacy, cid, email, cart), tremclk(legacy, cid, email, cart, encode=False),
                tremclk(section.id, cid, email.upper(), cart)):  # fmt: skip
        r = await api.get(url, headers=HUMAN)
        assert r.status_code == 302 and r.headers["location"] == cart, (url, r.status_code, r.text)
        assert r.headers["referrer-policy"] == "no-referrer"
    r = await api.get(tremclk(legacy, "0", email, cart), headers=HUMAN)  # a Reconnect experience id: not ours
    assert r.status_code == 302 and r.headers["location"] == cart
    r = await api.get(tremclk(legacy, cid, "someone.else@example.com", cart), headers=HUMAN)
    assert r.status_code == 302 and r.headers["location"] == cart

    for bad in ("https://evil.example/", "https://shop.example.evil.example/", "https://shop.example@evil.example/",
                "javascript:alert(1)//shop.example", "//shop.example/x", ""):  # fmt: skip
        assert is_neutral(await api.get(tremclk(legacy, cid, email, bad), headers=HUMAN)), bad
    assert is_neutral(await api.get(tremclk("unknown-section", cid, email, cart), headers=HUMAN))
    assert is_neutral(await api.get("/tremclk?targetUrl=https%3A%2F%2Fshop.example%2F", headers=HUMAN))
    assert (await set_links(api, section, fallback_url=FALLBACK)).status_code == 200
    assert is_fallback(await api.get(tremclk(legacy, cid, email, "https://evil.example/"), headers=HUMAN))

    r = await api.get(
        f"/tremop/?cuid={quote(email)}&cuidType=ihe&sec={legacy}&expId={cid}&expVer=0&mech=0", headers=HUMAN
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    r = await api.get("/tremop?sec=nope&cuid=x", headers=HUMAN)
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"

    got = [(h.kind, h.source, h.target, h.user_id) for h in hits(store, key)]
    implied = ("impression", "implied", None, uid)  # the open the first click implies (no open before it)
    assert got == [("click", "legacy", cart, uid), implied, *[("click", "legacy", cart, uid)] * 2,
                   ("impression", "legacy", None, uid)]  # fmt: skip
