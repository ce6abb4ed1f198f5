"""Campaign routes' query and path parameters are validated: a 422 naming them, never a 500."""

from __future__ import annotations

import httpx

from tests.helpers import SectionKeys, cart_campaign, create_campaign, make_section


async def test_bad_status_filter_and_version_number_are_422(api: httpx.AsyncClient, section: SectionKeys) -> None:
    cid = await create_campaign(api, section, cart_campaign(), activate=False)
    r = await api.get("/api/v1/campaigns", params={"status": "bogus"}, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "status"], r.text
    r = await api.get("/api/v1/campaigns", params={"status": "draft"}, headers=section.mgmt)
    assert [c["id"] for c in r.json()] == [cid]
    for version in ("99999999999999999999", "0"):
        r = await api.get(f"/api/v1/campaigns/{cid}/versions/{version}", headers=section.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "version"], r.text
    assert (await api.get(f"/api/v1/campaigns/{cid}/versions/1", headers=section.mgmt)).status_code == 200
    assert (await api.get(f"/api/v1/campaigns/{cid}/versions/7", headers=section.mgmt)).status_code == 404


async def test_a_window_that_never_opens_is_422_at_send_window(api: httpx.AsyncClient, section: SectionKeys) -> None:
    spec = cart_campaign(send_window={"start": "10:00", "end": "10:00"})
    r = await api.post("/api/v1/campaigns", json=spec, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "send_window"], r.text


async def test_unknown_products_and_other_sections_runs_are_404(api: httpx.AsyncClient, section: SectionKeys) -> None:
    assert (await api.get("/api/v1/products/nope", headers=section.mgmt)).status_code == 404
    other = await make_section(api)
    cid = await create_campaign(api, other, cart_campaign())
    assert (await api.get(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)).status_code == 404
    r = await api.get(f"/api/v1/campaigns/{cid}/runs", headers=other.mgmt)
    assert r.status_code == 200 and r.json() == []
