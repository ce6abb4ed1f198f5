"""Report fixes: a transaction's first event decides its attribution; removed variations keep their
name and control flag; the campaign list leaves test users' sends out, as the report does.

Facts are written through the engine's write paths (tests/reports_world.py), and every report
is checked against the raw recompute (`build_report(..., raw=True)`), which must stay identical.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from api.routes.reports import build_report
from domain.reports import Click, SiteEvent, attribute
from store import report_rollup, users
from store.campaigns import load_spec
from store.engine import Store
from store.tables import Campaign, Journey, Send, User
from tests.helpers import SectionKeys, create_campaign, step
from tests.reports_world import World

T0 = datetime(2026, 3, 2, tzinfo=UTC)
DAY = timedelta(days=1)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def spec(variations: list[dict[str, Any]], name: str = "Fixes") -> dict[str, Any]:
    return {"name": name, "type": "cart_abandonment", "channel_priority": ["email"],
            "settings": {"primary_metric": "revenue", "attribution_window": "P1D"}, "variations": variations}  # fmt: skip


A = {"id": "a", "name": "A", "share": 45, "steps": [step("S1")]}
B = {"id": "b", "name": "B", "share": 45, "steps": [step("S1")]}
HOLD = {"id": "holdout", "name": "Holdout", "share": 10, "control": True}


def both_reports(store: Store, cid: str, start: datetime, end: datetime) -> dict[str, Any]:
    """The report from the counters, asserted equal to the raw recompute (the reference)."""
    with store.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        sp = load_spec(s, c.id, c.version)
        fast, raw = build_report(s, c, sp, start, end), build_report(s, c, sp, start, end, raw=True)
    assert fast == raw
    return fast


def totals(report: dict[str, Any]) -> tuple[int, float]:
    return report["totals"]["purchases"], report["totals"]["revenue"]


# ---------------------------------------------------------------- 1. first event of a transaction


def test_a_repeat_after_a_click_of_a_purchase_made_before_it_is_not_attributed() -> None:
    """The tester's case, in the maths: "pre-7" bought before any click, sent again after one."""
    clicks = [Click("u", "a", 0, "email", h(2))]
    events = [SiteEvent("p1", "u", "purchase", h(1), 500.0, "pre-7"), SiteEvent("p2", "u", "purchase", h(3), 500.0, "pre-7")]
    assert attribute(clicks, events, DAY) == []
    later = [SiteEvent("p3", "u", "purchase", h(4), 20.0, "T"), SiteEvent("p4", "u", "purchase", h(5), 20.0, "T")]
    assert [x.event.id for x in attribute(clicks, events + later, DAY)] == ["p3"]


async def test_a_transactions_first_event_decides_in_both_report_paths(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Repeats of a transaction never count, whatever the first event was: before any click, or
    after the window closed (and a newer click came before the repeat). Counters equal raw."""
    cid = await create_campaign(api, section, spec([A, B, HOLD]), activate=False)
    w = World(store, section.id, cid)
    pre = w.user("a", h(0))  # buys before any click, clicks, sends the same transaction again
    w.event(pre, "purchase", h(1), 500.0, tx="pre-7")
    w.hit(pre, "a", "click", h(2))
    w.event(pre, "purchase", h(3), 500.0, tx="pre-7")
    late = w.user("a", h(0))  # buys after the window of a click; a new click; the same transaction again
    w.hit(late, "a", "click", h(1))
    w.event(late, "purchase", h(30), 300.0, tx="late-1")
    w.hit(late, "a", "click", h(31))
    w.event(late, "purchase", h(32), 300.0, tx="late-1")
    w.event(late, "add_to_cart", h(32.5), tx="late-1")  # another kind: a transaction of its own
    ok = w.user("b", h(0))  # clicks, buys, sends it again: counted once
    w.hit(ok, "b", "click", h(1))
    w.event(ok, "purchase", h(2), 40.0, tx="ok-1")
    w.event(ok, "purchase", h(3), 40.0, tx="ok-1")
    report = both_reports(store, cid, h(-1), h(24 * 5))
    assert totals(report) == (1, 40)
    assert report["totals"]["add_to_carts"] == 1
    v = {x["id"]: x for x in report["variations"]}
    assert v["a"]["metrics"]["purchases"]["count"] == 0 and v["b"]["metrics"]["revenue"]["count"] == 40
    narrow = both_reports(store, cid, h(-0.5), h(0.5))  # all users in one partial hour: the raw edge path
    assert totals(narrow) == (1, 40)


async def test_after_an_identity_merge_the_persons_first_event_of_a_transaction_decides(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Two users, then one person: the device that bought before any click decides for the
    person's later repeat (by the clicker) once the merge re-points the events."""
    cid = await create_campaign(api, section, spec([A, B, HOLD]), activate=False)
    w = World(store, section.id, cid)
    device = w.user("a", h(0))
    w.event(device, "purchase", h(1), 500.0, tx="m-1")
    owner = w.user("a", h(0))
    w.hit(owner, "a", "click", h(2))
    w.event(owner, "purchase", h(3), 500.0, tx="m-1")
    assert totals(both_reports(store, cid, h(-1), h(48))) == (1, 500)  # two people so far
    with store.session() as s:
        merged, into = s.get(User, device), s.get(User, owner)
        assert merged is not None and into is not None
        users.merge_users(s, merged=merged, into=into, now=h(4))
    assert totals(both_reports(store, cid, h(-1), h(48))) == (0, 0)


# ---------------------------------------------------------------- 2. variations removed by an edit


async def test_a_removed_holdout_stays_a_holdout_in_the_report(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Version 2 drops the holdout and a variation; their users keep the name and control flag of
    the last version that had them (not the id as a normal variation), step names too."""
    old = {"id": "old", "name": "Old one", "share": 10, "steps": [step("Old step")]}
    v1 = spec([{**A, "share": 40}, {**B, "share": 40}, old, HOLD])
    cid = await create_campaign(api, section, v1, activate=False)
    w = World(store, section.id, cid)
    for _ in range(3):
        w.user("holdout", h(1), control=True)
    gone = w.user("old", h(1))
    w.send(gone, "old", 0, "email", h(2))
    w.user("a", h(1))
    v2 = spec([{**A, "share": 50}, {**B, "share": 50}])
    r = await api.put(f"/api/v1/campaigns/{cid}", headers=section.mgmt, json=v2)
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    v3 = spec([{**A, "name": "A renamed", "share": 50}, {**B, "share": 50}])
    assert (await api.put(f"/api/v1/campaigns/{cid}", headers=section.mgmt, json=v3)).json()["version"] == 3
    params = {"from": h(0).isoformat(), "to": h(48).isoformat()}
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    v = {x["id"]: x for x in body["variations"]}
    assert [x["id"] for x in body["variations"]] == ["a", "b", "holdout", "old"]
    assert (v["holdout"]["name"], v["holdout"]["control"], v["holdout"]["users"]) == ("Holdout", True, 3)
    assert (v["old"]["name"], v["old"]["control"], v["old"]["users"]) == ("Old one", False, 1)
    assert v["a"]["name"] == "A renamed"  # the latest version names what it still has
    assert [st["step_name"] for st in body["steps"] if st["variation_id"] == "old"] == ["Old step"]
    assert "holdout" not in {x["id"] for x in body["winner"].get("variations", [])}
    both_reports(store, cid, h(0), h(48))


async def test_a_step_inserted_by_an_edit_does_not_take_the_figures_of_the_step_it_moved(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Figures are kept by step index: after version 2 inserts "Welcome" at index 0, index 0's sends
    are version 1's "A1". The row names both ("A1 / Welcome"), never "Welcome" alone (which showed
    A1's figures under a step never sent, and A2's under "A1")."""
    v1 = spec([{**A, "share": 100, "steps": [step("A1"), step("A2", "PT1H")]}])
    cid = await create_campaign(api, section, v1, activate=False)
    w = World(store, section.id, cid)
    for _ in range(2):
        uid = w.user("a", h(1))
        w.send(uid, "a", 0, "email", h(2))
        w.send(uid, "a", 1, "email", h(3))
    v2 = spec([{**A, "share": 100, "steps": [step("Welcome"), step("A1", "PT1H"), step("A2", "PT1H")]}])
    assert (await api.put(f"/api/v1/campaigns/{cid}", headers=section.mgmt, json=v2)).json()["version"] == 2
    body = both_reports(store, cid, h(0), h(48))
    assert [(st["step_index"], st["step_name"], st["metrics"]["send_requests"]["count"]) for st in body["steps"]] == [
        (0, "A1 / Welcome", 2), (1, "A2 / A1", 2)
    ], body["steps"]


# ---------------------------------------------------------------- 3. campaign list and test users


def journey_with_send(store: Store, section_id: str, cid: str, jid: str, uid: str, at: datetime, is_test: bool) -> None:
    """A journey row (test or not) and one accepted send of it, as the engine writes them."""
    with store.session() as s:
        journey = Journey(id=jid, workflow_id="w", section_id=section_id, campaign_id=cid, campaign_version=1,
                          user_id=uid, variation_id="a", is_test=is_test, triggered_at=at)  # fmt: skip
        s.add(journey)
        report_rollup.register_cohort(s, journey)
        send = Send(key=f"{jid}:0:email", journey_id=jid, section_id=section_id, campaign_id=cid, variation_id="a",
                    step_index=0, channel="email", integration_id="i", user_id=uid, status="accepted",
                    created_at=at, updated_at=at)  # fmt: skip
        s.add(send)
        report_rollup.count_send(s, send, "in_flight")


async def test_the_campaign_list_leaves_test_users_sends_out_like_the_report(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """A test user's sends (triggered or batched journeys) are in neither figure."""
    cid = await create_campaign(api, section, spec([A, B, HOLD], name="Listed"), activate=False)
    w = World(store, section.id, cid)
    now = datetime.now(UTC)
    real = w.user("a", now - timedelta(hours=5))
    w.send(real, "a", 0, "email", now - timedelta(hours=4))
    tester = w.user("a", now - timedelta(days=30), is_test=True)
    journey_with_send(store, section.id, cid, f"j_test_{tester}", tester, now - timedelta(hours=3), is_test=True)
    journey_with_send(store, section.id, cid, f"bj_test_{tester}", tester, now - timedelta(hours=2), is_test=True)
    journey_with_send(store, section.id, cid, f"bj_real_{real}", real, now - timedelta(hours=1), is_test=False)
    r = await api.get("/api/v1/reports/campaigns", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert [(c["id"], c["sends_last_7_days"]) for c in r.json()] == [(cid, 2)]
    report = both_reports(store, cid, now - timedelta(days=7), now + timedelta(seconds=1))
    assert report["totals"]["send_requests"] == 2
