"""A report counts an erased person's purchases whatever its range (docs/security.md, "Kept, pseudonymous").

An erasure deletes the person's raw events but keeps their report rows (attributions, enrolled-user
conversions). Whole cohort hours are read from those rows, the partial hours at a range's edges
from the raw tables: the edges must count the kept rows too, or the default range (campaign
creation -> now, two partial hours) lost the person's orders while an hour-aligned range kept them.
A rebuild from the raw tables must give the same report as well.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update
from sqlmodel import col, select

from store import report_rollup
from store.engine import Store
from store.report_rollup import hour_of
from store.retention import purge_events
from store.tables import Campaign, Event
from tests.helpers import SectionKeys, create_campaign, step
from tests.reports_world import World

SPEC = {
    "name": "Erased buyers",
    "type": "cart_abandonment",
    "channel_priority": ["email"],
    "settings": {"primary_metric": "purchases", "attribution_window": "P1D"},
    "variations": [
        {"id": "a", "name": "A", "share": 90, "steps": [step("S1")]},
        {"id": "hold", "name": "Holdout", "share": 10, "control": True},
    ],
}


def _buyer(w: World, variation: str, at: datetime, orders: list[tuple[str | None, float]]) -> str:
    """A user first triggered at `at` who is sent a message, clicks it, adds to cart and buys `orders`
    (transaction id, value; a repeated id is a resend of one order)."""
    uid = w.user(variation, at)
    w.send(uid, variation, 0, "email", _later(at, 1))
    w.hit(uid, variation, "click", _later(at, 2))
    w.event(uid, "add_to_cart", _later(at, 3), 5.0)
    for i, (tx, value) in enumerate(orders):
        w.event(uid, "purchase", _later(at, 4 + i), value, tx)
    return uid


def _later(at: datetime, ms: int) -> datetime:
    return at + timedelta(milliseconds=ms)


def _figures(body: dict[str, Any]) -> dict[str, Any]:
    """What a report counts (not the range it was asked for)."""
    return {key: body[key] for key in ("totals", "variations", "channels", "steps")} | {
        "revenue_by_day": body["series"]["revenue_by_day"]
    }


async def _report(api: httpx.AsyncClient, section: SectionKeys, cid: str, **params: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params=params)
    assert r.status_code == 200, r.text
    return _figures(r.json())


async def test_an_erased_buyer_counts_alike_in_partial_and_whole_hours_and_after_a_rebuild(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await create_campaign(api, section, SPEC, activate=False)
    with store.session() as s:
        created = s.get(Campaign, cid).created_at  # type: ignore[union-attr]
    w = World(store, section.id, cid)
    at = datetime.now(UTC)
    erased = _buyer(w, "a", at, [("order-1", 46.0), ("order-1", 46.0), (None, 12.5)])  # order-1 sent twice
    _buyer(w, "a", at, [("order-9", 30.0)])
    held = w.user("hold", at, control=True)  # enrolled, never sent: converts without a click
    w.event(held, "purchase", at + timedelta(milliseconds=5), 20.0)
    next_hour = hour_of(datetime.now(UTC)) + timedelta(hours=1)
    aligned = {"from": hour_of(created).isoformat(), "to": next_hour.isoformat()}

    before = await _report(api, section, cid)  # default range: creation -> now, partial hours (raw edges)
    assert before == await _report(api, section, cid, **aligned)  # whole hours: the counters
    a = {v["id"]: v for v in before["variations"]}["a"]["metrics"]
    assert (a["purchases"]["count"], a["revenue"]["count"], a["add_to_carts"]["count"]) == (3, 88.5, 2), a

    r = await api.delete(f"/api/v1/users/{erased}", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["erased"]["events"] == 4, r.text

    assert await _report(api, section, cid) == before, "the partial hours lost the erased buyer's orders"
    assert await _report(api, section, cid, **aligned) == before

    with store.session() as s:
        assert report_rollup.rebuild(s, [cid]) == 1
    assert await _report(api, section, cid) == before
    assert await _report(api, section, cid, **aligned) == before


async def test_purchases_purged_by_retention_count_alike_in_partial_and_whole_hours(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Retention deletes old raw events and keeps their report rows (docs/reports.md): a range whose
    edge cuts the buyers' cohort hour counts them as the whole hour does."""
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)
    t0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    _buyer(w, "a", t0 + timedelta(minutes=20), [("order-1", 46.0), ("order-1", 46.0)])
    _buyer(w, "a", t0 + timedelta(minutes=40), [(None, 30.0)])
    whole = {"from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat()}
    partial = {"from": (t0 + timedelta(minutes=10)).isoformat(), "to": (t0 + timedelta(minutes=50)).isoformat()}
    before = await _report(api, section, cid, **whole)
    assert before == await _report(api, section, cid, **partial)
    a = {v["id"]: v for v in before["variations"]}["a"]["metrics"]
    assert (a["purchases"]["count"], a["revenue"]["count"]) == (2, 76), a

    with store.session() as s:
        s.execute(update(Event).where(col(Event.section_id) == section.id).values(dispatched=True))
    assert purge_events(store, t0 + timedelta(days=1)) >= 5
    with store.session() as s:
        assert s.exec(select(Event.id).where(col(Event.section_id) == section.id)).first() is None

    assert await _report(api, section, cid, **partial) == before, "the partial hour lost the purged purchases"
    assert await _report(api, section, cid, **whole) == before
