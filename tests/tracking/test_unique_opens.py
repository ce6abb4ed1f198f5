"""Opens and clicks count per send: a reloaded pixel or a re-clicked link is one open / click of
its send (the totals show every human hit), CTR divides clicked sends by opened sends, and mail
privacy proxies prefetching the pixel (Apple Mail Privacy Protection) are recorded as bots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import delete, update
from sqlmodel import col
from temporalio.testing import WorkflowEnvironment

from api.routes.reports import build_report
from domain.tracking import bot_reason
from store import report_rollup
from store.campaigns import load_spec
from store.engine import Store
from store.report_tables import ReportRollup
from store.tables import Campaign
from store.tracking_tables import TrackingHit
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    create_campaign,
    journey_result,
    outbox,
    reachable_user,
    step,
)
from tests.helpers import collect as collect_event
from tests.tracking.test_tracking_api import HUMAN, age_send, hits, path, products

FAR = datetime(2100, 1, 1, tzinfo=UTC)  # sends carry (skipped-ahead) workflow time
MPP = {"User-Agent": "Mozilla/5.0"}  # Apple's privacy proxy names itself nothing more
T = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_bare_mozilla_agent_opening_the_pixel_is_a_privacy_proxy() -> None:
    """Only an open by a GET naming itself "Mozilla/5.0" and nothing else; a person's mail app
    adds its platform and engine, a click is never the proxy's, a push impression comes by POST."""

    def reason(ua: str | None, kind: str = "impression", method: str = "GET") -> str | None:
        return bot_reason(method=method, user_agent=ua, at=T, sent_at=T - timedelta(minutes=5), kind=kind)

    assert reason("Mozilla/5.0") == reason(" Mozilla/5.0 ") == "privacy_proxy"
    assert reason(HUMAN["User-Agent"]) is None
    assert reason("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15") is None
    assert reason("Mozilla/5.0", kind="click") is None
    assert reason("Mozilla/5.0", method="POST") is None
    assert reason("Mozilla/5.0", method="HEAD") == "head_request"


async def _sent_email(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, sec: SectionKeys
) -> tuple[str, str, dict[str, Any]]:
    """A campaign whose one email carries a tracked link and the pixel, sent (and aged) to one user."""
    await add_integration(api, sec)
    await products(api, sec, {"sku": "s9", "name": "Scarf", "url": "https://shop.example/p/s9"})
    cart = quote("https://shop.example/cart", safe="")
    payload = {"html": f'<a href="${{Tracking link}}{cart}">Go</a>${{Tracking pixel}}'}
    cid = await create_campaign(api, sec, cart_campaign(steps=[step("First", payload=payload)]))
    dyid, uid = await reachable_user(api, sec)
    await collect_event(api, sec, dyid, add_to_cart("s9", 20.0))
    result = await journey_result(env.client, sec, cid, uid)
    assert [d.outcome for d in result.decisions] == ["sent"], result
    (msg,) = await outbox(api, sec)
    age_send(store, msg["send_key"])  # hits right after delivery count as bots
    return cid, msg["send_key"], msg["payload"]


def _reports(store: Store, cid: str) -> list[dict[str, Any]]:
    """The report from the counters (whole hours) with raw edges, and from the raw tables: equal."""
    with store.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        spec = load_spec(s, cid, c.version)
        start = c.created_at.replace(minute=0, second=0, microsecond=0)
        counted = build_report(s, c, spec, start, FAR)
        raw = build_report(s, c, spec, start, FAR, raw=True)
    assert counted == raw
    return [counted, raw]


def _figures(report: dict[str, Any]) -> tuple[Any, ...]:
    (v,) = report["variations"]
    m = v["metrics"]
    counts = (m["impressions"]["count"], m["total_impressions"]["count"], m["clicks"]["count"],
              m["total_clicks"]["count"])  # fmt: skip
    t = report["totals"]
    assert (t["impressions"], t["total_impressions"], t["clicks"], t["total_clicks"]) == counts
    return (*counts, v["ctr"], t["ctr"])


async def test_reloads_and_privacy_proxy_opens_count_once_per_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """Apple's proxy prefetches the pixel (a bot hit, `privacy_proxy`), the reader then reloads it
    ten times and clicks twice: one open, one click, CTR 1.0; the totals show 10 and 2 hits."""
    cid, send_key, body = await _sent_email(api, env, store, section)
    pixel = path(body["html"].split('src="')[1].split('"')[0])
    link = path(body["html"].split('href="')[1].split('"')[0])
    assert (await api.get(pixel, headers=MPP)).status_code == 200
    for _ in range(10):
        assert (await api.get(pixel, headers=HUMAN)).status_code == 200
    for _ in range(2):
        assert (await api.get(link, headers=HUMAN)).status_code == 302

    got = [(h.kind, h.bot, h.bot_reason, h.first_of_send) for h in hits(store, send_key)]
    assert got == [
        ("impression", True, "privacy_proxy", False),
        ("impression", False, None, True),
        *[("impression", False, None, False)] * 9,
        ("click", False, None, True),
        ("click", False, None, False),
    ]
    for report in _reports(store, cid):
        assert _figures(report) == (1, 10, 1, 2, 1.0, 1.0)


async def test_start_up_corrects_hits_and_counters_stored_before_opens_counted_per_send(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """A database from before: its hits have no first-of-send flag, the proxy's prefetch counted as
    a human open, and its counters add up every hit. The once-per-database start-up migration
    sets the proxy's open apart, flags each send's first hits and rebuilds the counters."""
    cid, send_key, body = await _sent_email(api, env, store, section)
    pixel = path(body["html"].split('src="')[1].split('"')[0])
    assert (await api.get(pixel, headers=MPP)).status_code == 200
    for _ in range(3):
        assert (await api.get(pixel, headers=HUMAN)).status_code == 200
    with store.session() as s:  # as the previous version stored them
        s.execute(update(TrackingHit).values(first_of_send=False, bot=False, bot_reason=None))
        old = col(ReportRollup.metric).in_(["send_impression", "send_click", "migrated_opens"])
        s.execute(delete(ReportRollup).where(old))
        report_rollup.rebuild(s, [cid])  # counters as they were: every human hit, the proxy's included
    for report in _reports(store, cid):
        assert _figures(report)[:2] == (0, 4)

    with store.session() as s:
        assert report_rollup.migrate_reports(s) >= 1
    got = [(h.bot_reason, h.first_of_send) for h in hits(store, send_key)]
    assert got == [("privacy_proxy", False), (None, True), (None, False), (None, False)]
    for report in _reports(store, cid):
        assert _figures(report) == (1, 3, 0, 0, 0.0, 0.0)
    with store.session() as s:  # once per database
        assert report_rollup.migrate_reports(s) == 0


async def test_two_opens_taking_themselves_for_the_first_record_one_first(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys, monkeypatch: Any
) -> None:
    """Two opens of a send recorded at once may both find no first open yet: the unique index
    refuses the later one's flag and it is recorded again, as a repeat (not lost, not a 2nd open)."""
    cid, send_key, body = await _sent_email(api, env, store, section)
    pixel = path(body["html"].split('src="')[1].split('"')[0])
    assert (await api.get(pixel, headers=HUMAN)).status_code == 200
    real, missed = report_rollup._send_has_first, list[TrackingHit]()

    def racing(s: Any, hit: TrackingHit) -> bool:  # the first check misses the other's open once
        if not missed:
            missed.append(hit)
            return False
        return real(s, hit)

    monkeypatch.setattr(report_rollup, "_send_has_first", racing)
    assert (await api.get(pixel, headers=HUMAN)).status_code == 200
    assert [h.first_of_send for h in hits(store, send_key)] == [True, False] and missed
    for report in _reports(store, cid):
        assert _figures(report)[:2] == (1, 2)
