"""A report's range: times with a zone, within 1970-9000, `to` after `from`; each refusal is a
422 at the parameter where it was given (query or body), never a 500."""

from __future__ import annotations

import httpx

from tests.helpers import SectionKeys, cart_campaign, create_campaign


def _loc(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    return list(r.json()["detail"][0]["loc"])


async def test_report_ranges_are_refused_at_their_field(api: httpx.AsyncClient, section: SectionKeys) -> None:
    cid = await create_campaign(api, section, cart_campaign())
    report, link = f"/api/v1/campaigns/{cid}/report", f"/api/v1/campaigns/{cid}/report-link"

    async def query(**params: str) -> httpx.Response:
        return await api.get(report, params=params, headers=section.mgmt)

    assert _loc(await query(**{"from": "2026-12-06T00:00:00Z", "to": "2026-12-07T00:00:00"})) == ["query", "to"]
    assert _loc(await query(**{"from": "2026-12-06T00:00:00", "to": "2026-12-07T00:00:00Z"})) == ["query", "from"]
    assert _loc(await query(**{"from": "2026-12-07T00:00:00Z", "to": "2026-12-06T00:00:00Z"})) == ["query", "to"]
    # Without 'from', a 'to' before the campaign existed names the default it fell before.
    r = await query(to="2020-01-01T00:00:00Z")
    assert _loc(r) == ["query", "to"] and "campaign's creation" in r.json()["detail"][0]["msg"], r.text
    # Near the ends of the datetime range: the hour rounding used to overflow into a 500.
    assert _loc(await query(**{"from": "9999-12-31T23:30:00Z", "to": "9999-12-31T23:59:00Z"})) == ["query", "from"]
    assert _loc(await query(to="9999-12-31T23:59:59-14:00")) == ["query", "to"]
    assert _loc(await query(**{"from": "0001-01-01T00:00:00+14:00"})) == ["query", "from"]
    r = await api.get(f"/api/v1/campaigns/{cid}/report.html", params={"to": "9999-12-31T23:59:59-14:00"},
                      headers=section.mgmt)  # fmt: skip
    assert _loc(r) == ["query", "to"]

    async def share(body: dict[str, str]) -> httpx.Response:
        return await api.post(link, json=body, headers=section.mgmt)

    assert _loc(await share({"from": "2026-12-06T00:00:00"})) == ["body", "from"]
    assert _loc(await share({"to": "9999-12-31T23:59:59-14:00"})) == ["body", "to"]
    assert _loc(await share({"from": "2026-12-07T00:00:00Z", "to": "2026-12-06T00:00:00Z"})) == ["body", "to"]
    r = await share({"from": "2026-12-06T00:00:00+01:00", "to": "2026-12-07T00:00:00Z"})
    assert r.status_code == 200, r.text
    page = await api.get(httpx.URL(r.json()["url"]).path)
    assert page.status_code == 200 and "<html" in page.text.lower()
