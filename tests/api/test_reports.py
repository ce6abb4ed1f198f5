"""Campaign reports over real tables: time range, attribution, normalization, CSV, HTML, list."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx

from domain.tracking import Signer
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys, create_campaign, step
from tests.reports_world import World

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def spec(name: str = "Report test") -> dict:
    return {"name": name, "type": "cart_abandonment", "channel_priority": ["email", "sms"],
            "settings": {"primary_metric": "revenue", "attribution_window": "P1D"},
            "variations": [{"id": "a", "name": "A", "share": 45, "steps": [step("S1"), step("S2", "P1D", ("email", "sms"))]},
                           {"id": "b", "name": '=HYPERLINK("x")', "share": 45, "steps": [step("S1")]},
                           {"id": "hold", "name": "Holdout", "share": 10, "control": True}]}  # fmt: skip


async def test_report_counts_attribution_and_time_range(api: httpx.AsyncClient, store: Store, section: SectionKeys) -> None:
    """Users first triggered in range only; attributed revenue; per-user and per-channel figures."""
    cid = await create_campaign(api, section, spec(), activate=False)
    w = World(store, section.id, cid)
    h = lambda hours: T0 + timedelta(hours=hours)  # noqa: E731
    a1 = w.user("a", h(1))  # clicks email twice, buys after the second click (once, despite resend)
    w.send(a1, "a", 0, "email", h(2)); w.hit(a1, "a", "impression", h(3)); w.hit(a1, "a", "click", h(3))  # noqa: E702
    w.send(a1, "a", 1, "sms", h(26)); w.hit(a1, "a", "click", h(27), channel="sms", step_index=1)  # noqa: E702
    w.event(a1, "purchase", h(28), 100.0, tx="T1"); w.event(a1, "purchase", h(28.5), 100.0, tx="T1")  # noqa: E702
    w.event(a1, "add_to_cart", h(27.5))
    a2 = w.user("a", h(1))  # sent, impression, a bot click, buys: nothing attributed
    w.send(a2, "a", 0, "email", h(2)); w.hit(a2, "a", "impression", h(3)); w.hit(a2, "a", "click", h(3), bot=True)  # noqa: E702
    w.event(a2, "purchase", h(4), 50.0)
    a3 = w.user("a", h(1))  # not opted in anywhere: allocated, never sent
    b1 = w.user("b", h(2), identified=False)  # clicks, buys while unidentified: not attributed
    w.send(b1, "b", 0, "email", h(3)); w.hit(b1, "b", "click", h(4)); w.event(b1, "purchase", h(5), 70.0)  # noqa: E702
    b2 = w.user("b", h(2))  # clicks, buys after the 1-day window
    w.send(b2, "b", 0, "email", h(3), status="failed"); w.hit(b2, "b", "click", h(4)); w.event(b2, "purchase", h(29), 80.0)  # noqa: E702
    w.user("hold", h(2), control=True)
    old = w.user("a", T0 - timedelta(days=3))  # first triggered before the range: never counted
    w.retrigger(old, "a", h(5)); w.send(old, "a", 0, "email", h(6)); w.hit(old, "a", "click", h(7))  # noqa: E702
    early = w.user("b", h(10))  # a click before their first trigger is not theirs to count
    w.hit(early, "b", "click", h(9))
    late = w.user("b", h(100))  # first triggered after the range
    w.send(late, "b", 0, "email", h(101))
    del a3

    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
                      params={"from": T0.isoformat(), "to": h(48).isoformat()})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["totals"]["users_triggered"] == 7
    v = {x["id"]: x for x in body["variations"]}
    assert (v["a"]["users"], v["b"]["users"], v["hold"]["users"]) == (3, 3, 1) and v["hold"]["control"]
    assert v["a"]["metrics"]["send_requests"] == {"count": 3, "per_user": 1.0}
    assert v["a"]["metrics"]["revenue"] == {"count": 100, "per_user": 33.333333}  # money per user: 6 decimals
    assert v["a"]["metrics"]["purchases"]["count"] == 1 and v["a"]["metrics"]["add_to_carts"]["count"] == 1
    assert v["a"]["ctr"] == 0.5  # 1 human email click / 2 impressions
    assert v["b"]["metrics"]["revenue"]["count"] == 0 and v["b"]["metrics"]["clicks"]["count"] == 2
    assert v["b"]["metrics"]["send_requests"]["count"] == 2  # a failed provider call is still a send request
    ch = {(x["variation_id"], x["channel"]): x for x in body["channels"]}
    assert ch[("a", "email")]["users"] == 2 and ch[("a", "sms")]["users"] == 1
    assert ch[("a", "sms")]["metrics"]["revenue"] == {"count": 100, "per_user": 100.0}  # last click was the SMS
    assert ch[("a", "email")]["metrics"]["revenue"]["count"] == 0
    steps = {(x["variation_id"], x["step_name"]): x for x in body["steps"]}
    assert steps[("a", "S2")]["metrics"]["purchases"]["count"] == 1
    assert body["winner"]["status"] == "not_enough_data" and body["winner"]["baseline"] == "a"
    assert body["series"]["revenue_by_day"] == {"2026-02-02": 100.0}
    assert sum(body["series"]["sends_by_day"].values()) == 5

    narrow = (await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
                            params={"from": h(1.5).isoformat(), "to": h(48).isoformat()})).json()  # fmt: skip
    assert narrow["totals"]["users_triggered"] == 4  # b1, b2, early, holdout: a-users triggered before 1.5 h

    # Cohort semantics: a user first triggered in range brings all their later facts; others none.
    day1 = (await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
                          params={"from": T0.isoformat(), "to": h(24).isoformat()})).json()  # fmt: skip
    a = {x["id"]: x for x in day1["variations"]}["a"]
    assert a["users"] == 3 and a["metrics"]["send_requests"]["count"] == 3  # a1's SMS at 26 h counts
    assert a["metrics"]["revenue"]["count"] == 100 and day1["series"]["revenue_by_day"] == {"2026-02-02": 100.0}
    before = (await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
                            params={"from": (T0 - timedelta(days=4)).isoformat(), "to": T0.isoformat()})).json()  # fmt: skip
    assert before["totals"]["users_triggered"] == 1 and before["totals"]["send_requests"] == 1  # old's send at 6 h
    assert before["totals"]["clicks"] == 1
    later = (await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
                           params={"from": h(3).isoformat(), "to": h(200).isoformat()})).json()  # fmt: skip
    assert later["totals"]["users_triggered"] == 2  # early and late; old's retrigger at 5 h is not a first trigger
    assert later["totals"]["send_requests"] == 1 and later["totals"]["clicks"] == 0  # early's click preceded its trigger

    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
                      params={"from": T0.isoformat(), "to": h(48).isoformat(), "format": "csv"})  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][:3] == ["section", "variation", "variation_name"]
    assert any(row[2] == "'=HYPERLINK(\"x\")" for row in rows)
    assert not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row)

    r = await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt,
                      params={"from": T0.isoformat(), "to": h(48).isoformat()})  # fmt: skip
    assert r.status_code == 200 and "<svg" in r.text and "Not enough data" in r.text
    assert "=HYPERLINK(&quot;x&quot;)" in r.text and "<script" not in r.text

    bad = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
                        params={"from": h(5).isoformat(), "to": h(1).isoformat()})  # fmt: skip
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "to"]


async def test_campaign_list_counts_sends_of_the_last_7_days(api: httpx.AsyncClient, store: Store, section: SectionKeys) -> None:
    """The list shows send requests of the last 7 days only."""
    cid = await create_campaign(api, section, spec("Listed"), activate=False)
    w = World(store, section.id, cid)
    now = datetime.now(UTC)
    uid = w.user("a", now - timedelta(days=10))
    w.send(uid, "a", 0, "email", now - timedelta(days=8))
    w.send(uid, "a", 1, "email", now - timedelta(days=2))
    w.send(uid, "a", 1, "sms", now - timedelta(hours=1), status="skipped")
    r = await api.get("/api/v1/reports/campaigns", headers=section.mgmt)
    assert r.status_code == 200
    assert [(c["id"], c["sends_last_7_days"]) for c in r.json()] == [(cid, 1)]


async def test_signed_report_link_opens_without_a_key_and_refuses_tampering(
    api: httpx.AsyncClient, settings: Settings, section: SectionKeys
) -> None:
    """A report link works without an API key until it expires; tampered or expired links get 404."""
    cid = await create_campaign(api, section, spec("Shared"), activate=False)
    r = await api.post(f"/api/v1/campaigns/{cid}/report-link", headers=section.mgmt, json={"valid_hours": 2})
    assert r.status_code == 200, r.text
    path = "/r/" + r.json()["url"].rsplit("/r/", 1)[1]
    page = await api.get(path)
    assert page.status_code == 200 and "Shared" in page.text and page.headers["cache-control"] == "no-store"
    assert (await api.get(path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB"))).status_code == 404
    expired = Signer(settings.secret_keys).sign("r", {"c": cid, "s": section.id, "e": 1, "f": None, "t": None})
    assert (await api.get(f"/r/{expired}")).status_code == 404
    assert (await api.get(f"/api/v1/campaigns/{cid}/report.html")).status_code == 401


async def test_a_variation_nobody_reached_reports_every_metric_at_zero(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Before any user arrives, each variation lists every metric with count 0 (it had `metrics: {}`,
    which broke clients reading `metrics.clicks.count`), in JSON, CSV and HTML alike."""
    cid = await create_campaign(api, section, spec("Nobody yet"))
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt)
    assert r.status_code == 200, r.text
    variations = r.json()["variations"]
    assert variations and all(v["users"] == 0 for v in variations)
    for v in variations:
        assert v["metrics"]["clicks"] == {"count": 0, "per_user": 0.0}, v
        assert {"send_requests", "impressions", "clicks", "purchases", "revenue"} <= set(v["metrics"]), v
    for path in ("report?format=csv", "report.html"):
        assert (await api.get(f"/api/v1/campaigns/{cid}/{path}", headers=section.mgmt)).status_code == 200
