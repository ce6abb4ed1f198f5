"""A burst of one send's clicks and pixel loads recorded at the same moment (a reader's double
clicks and a mail app loading the pixel again, all in parallel): every human hit is stored once,
the send has one open and one click (its first hits, `first_of_send`, one of them maybe the open
its first click implies), and the totals count every hit. Before, a recorder whose transaction
collided twice on `ux_hit_send_first` (its implied open against a real open, then its first click
against another click) lost the click: the reader got the redirect, the report one click less."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from settings import Settings
from store import report_rollup
from store.engine import Store
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
from tests.tracking.test_unique_opens import _figures, _reports

BURST = 8  # clicks and as many pixel loads of one send, all at once
ROUNDS = 12  # sends, each with its own burst (the race is on a send's first hits)


async def _burst(c: httpx.AsyncClient, pixel: str, link: str) -> None:
    """BURST clicks and BURST pixel loads of one send in parallel: the routes record each hit in
    a worker thread (`asyncio.to_thread`), so the transactions really overlap."""
    calls = [c.get(link, headers=HUMAN) for _ in range(BURST)] + [c.get(pixel, headers=HUMAN) for _ in range(BURST)]
    calls = [x for pair in zip(calls[:BURST], calls[BURST:], strict=True) for x in pair]  # interleaved
    answers = await asyncio.gather(*calls)
    assert [r.status_code for r in answers] == [302, 200] * BURST


async def test_parallel_clicks_and_opens_of_one_send_are_all_recorded_once(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, settings: Settings, section: SectionKeys,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    await add_integration(api, section)
    await products(api, section, {"sku": "s9", "name": "Scarf", "url": "https://shop.example/p/s9"})
    cart = quote("https://shop.example/cart", safe="")
    payload = {"html": f'<a href="${{Tracking link}}{cart}">Go</a>${{Tracking pixel}}'}
    cid = await create_campaign(api, section, cart_campaign(steps=[step("First", payload=payload)]))
    # No recording budget per address: every hit of the burst comes from the test client's.
    app = create_app(settings.model_copy(update={"tracking_hits_per_second": 0}), store=store, temporal=env.client)
    caplog.set_level(logging.INFO, logger="api.routes.tracking")

    seen: set[str] = set()
    implied = 0
    for _ in range(ROUNDS):
        dyid, uid = await reachable_user(api, section)
        await collect_event(api, section, dyid, add_to_cart("s9", 20.0))
        result = await journey_result(env.client, section, cid, uid)
        assert [d.outcome for d in result.decisions] == ["sent"], result
        (msg,) = [m for m in await outbox(api, section) if m["send_key"] not in seen]
        send_key, html = msg["send_key"], msg["payload"]["html"]
        seen.add(send_key)
        age_send(store, send_key)  # hits right after delivery count as bots
        pixel, link = path(html.split('src="')[1].split('"')[0]), path(html.split('href="')[1].split('"')[0])

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as c:
            await _burst(c, pixel, link)

        got = [(h.kind, h.source, h.first_of_send) for h in hits(store, send_key) if not h.bot]
        assert len(got) == len(hits(store, send_key)), got  # all human
        sources = sorted((kind, source) for kind, source, _ in got)
        n_implied = sources.count(("impression", report_rollup.IMPLIED))
        assert (
            sources
            == [("click", "link")] * BURST
            + [("impression", report_rollup.IMPLIED)] * n_implied
            + [("impression", "pixel")] * BURST
        ), got  # every hit stored once; at most one open implied
        assert n_implied <= 1, got
        # One open and one click of the send: its first real open or the open its first click implied.
        assert sorted(kind for kind, _, first in got if first) == ["click", "impression"], got
        assert all(first for _, source, first in got if source == report_rollup.IMPLIED), got
        implied += n_implied

    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or "again" in r.getMessage()]
    assert not problems, [(r.getMessage(), r.exc_info and r.exc_info[1]) for r in problems]  # not even a retry
    n = ROUNDS * BURST
    for report in _reports(store, cid):  # the counters (whole hours, raw edges) and the raw path
        assert _figures(report) == (ROUNDS, n + implied, ROUNDS, n, 1.0, 1.0)
    with store.session() as s:  # a rebuild from the raw hits agrees with the live counters
        report_rollup.rebuild(s, [cid])
    for report in _reports(store, cid):
        assert _figures(report) == (ROUNDS, n + implied, ROUNDS, n, 1.0, 1.0)
