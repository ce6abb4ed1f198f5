"""A report's day series in a time zone (`tz`, an IANA name): send requests and attributed revenue
by local day, DST included, made of the hourly counters (counters and raw edges agree); a zone
offset by a fraction of an hour says its days are approximate; an unknown zone is a 422 at the
field, in the query as in a report link's body."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from store.engine import Store
from tests.helpers import SectionKeys, create_campaign, step
from tests.reports_world import World

SPEC = {"name": "Days", "type": "cart_abandonment", "channel_priority": ["email"],
        "settings": {"primary_metric": "purchases", "attribution_window": "P1D"},
        "variations": [{"id": "a", "name": "A", "share": 100, "steps": [step("S1")]}]}  # fmt: skip
# New York leaves EST (-5) for EDT (-4) at 2026-03-08T07:00Z.
TRIGGER = datetime(2026, 3, 7, 20, 0, tzinfo=UTC)
SENDS = [datetime(2026, 3, 8, 3, 30, tzinfo=UTC), datetime(2026, 3, 8, 12, 0, tzinfo=UTC),
         datetime(2026, 3, 8, 23, 30, tzinfo=UTC), datetime(2026, 3, 8, 18, 45, tzinfo=UTC)]  # fmt: skip
WHOLE_HOURS = {"from": "2026-03-07T00:00:00Z", "to": "2026-03-10T00:00:00Z"}
EDGE = {"from": "2026-03-07T19:59:00Z", "to": "2026-03-10T00:00:00Z"}  # the trigger's hour is a raw edge


async def _campaign(api: httpx.AsyncClient, store: Store, section: SectionKeys) -> str:
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)
    uid = w.user("a", TRIGGER)
    for at in SENDS:
        w.send(uid, "a", 0, "email", at)
    w.hit(uid, "a", "click", datetime(2026, 3, 8, 3, 0, tzinfo=UTC))
    w.event(uid, "purchase", datetime(2026, 3, 8, 3, 45, tzinfo=UTC), 10.0)  # 22:45 on the 7th in New York
    w.hit(uid, "a", "click", datetime(2026, 3, 8, 18, 40, tzinfo=UTC))
    w.event(uid, "purchase", datetime(2026, 3, 8, 18, 50, tzinfo=UTC), 5.0)  # 00:20 on the 9th in Kolkata
    return cid


async def _series(api: httpx.AsyncClient, sec: SectionKeys, cid: str, **params: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=sec.mgmt, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    return {**body["series"], "warnings": [w["code"] for w in body["warnings"]]}


async def test_day_series_follow_the_requested_time_zone(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await _campaign(api, store, section)
    utc = await _series(api, section, cid, **WHOLE_HOURS)
    assert utc == {"time_zone": "UTC", "sends_by_day": {"2026-03-08": 4}, "revenue_by_day": {"2026-03-08": 15.0},
                   "exact_days": True, "warnings": []}  # fmt: skip
    for params in (WHOLE_HOURS, EDGE):  # counters, and the raw edge
        new_york = await _series(api, section, cid, tz="America/New_York", **params)
        assert new_york == {
            "time_zone": "America/New_York", "sends_by_day": {"2026-03-07": 1, "2026-03-08": 3},
            "revenue_by_day": {"2026-03-07": 10.0, "2026-03-08": 5.0}, "exact_days": True, "warnings": [],
        }, params  # fmt: skip
    # +05:30: the hour 18:00Z starts at 23:30 local, so its 18:45Z send and 18:50Z purchase (00:15 and
    # 00:20 on the 9th) count on the 8th; the report says its days are approximate.
    kolkata = await _series(api, section, cid, tz="Asia/Kolkata", **WHOLE_HOURS)
    assert kolkata["sends_by_day"] == {"2026-03-08": 3, "2026-03-09": 1}
    assert kolkata["revenue_by_day"] == {"2026-03-08": 15.0}
    assert (kolkata["exact_days"], kolkata["warnings"]) == (False, ["approximate_days"])
    page = await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt,
                         params={"tz": "America/New_York", **WHOLE_HOURS})  # fmt: skip
    assert "Send requests per day (America/New_York)" in page.text


async def test_an_unknown_time_zone_is_refused_at_its_field(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await _campaign(api, store, section)
    for path in ("report", "report.html"):
        r = await api.get(f"/api/v1/campaigns/{cid}/{path}", headers=section.mgmt, params={"tz": "Mars/Olympus"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["query", "tz"] and "Mars/Olympus" in r.json()["detail"][0]["msg"]
    link = f"/api/v1/campaigns/{cid}/report-link"
    r = await api.post(link, json={"tz": "Mars/Olympus"}, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tz"], r.text
    r = await api.post(link, json={"tz": "America/New_York", **WHOLE_HOURS}, headers=section.mgmt)
    assert r.status_code == 200, r.text
    page = await api.get(httpx.URL(r.json()["url"]).path)
    assert page.status_code == 200 and "Send requests per day (America/New_York)" in page.text
