"""A campaign's shared report links can be revoked before they expire: links made before the
revocation get the "not valid" page, links made afterwards work, other campaigns' links too."""

from __future__ import annotations

import httpx

from tests.helpers import SectionKeys, cart_campaign, create_campaign, make_section


async def _link(api: httpx.AsyncClient, section: SectionKeys, cid: str) -> str:
    r = await api.post(f"/api/v1/campaigns/{cid}/report-link", json={}, headers=section.mgmt)
    assert r.status_code == 200, r.text
    return httpx.URL(r.json()["url"]).path


async def test_revoked_report_links_stop_working(api: httpx.AsyncClient, section: SectionKeys) -> None:
    cid = await create_campaign(api, section, cart_campaign())
    other = await create_campaign(api, section, cart_campaign())
    old, others = await _link(api, section, cid), await _link(api, section, other)
    assert (await api.get(old)).status_code == 200

    r = await api.delete(f"/api/v1/campaigns/{cid}/report-links", headers=section.mgmt)
    assert r.status_code == 200 and "revoked_before" in r.json(), r.text

    assert (await api.get(old)).status_code == 404
    assert (await api.get(others)).status_code == 200
    assert (await api.get(await _link(api, section, cid))).status_code == 200


async def test_revoking_needs_a_management_key_of_the_campaigns_section(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    other_section = await make_section(api)
    cid = await create_campaign(api, section, cart_campaign())
    link = await _link(api, section, cid)
    revoke = f"/api/v1/campaigns/{cid}/report-links"
    assert (await api.delete(revoke)).status_code == 401
    assert (await api.delete(revoke, headers={"Authorization": f"Bearer {section.ingestion}"})).status_code == 403
    assert (await api.delete(revoke, headers=other_section.mgmt)).status_code == 404
    assert (await api.get(link)).status_code == 200


async def test_a_report_link_needs_no_body(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """The documented defaults (24 hours, the whole campaign) apply to a request without a body."""
    cid = await create_campaign(api, section, cart_campaign())
    r = await api.post(f"/api/v1/campaigns/{cid}/report-link", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert (await api.get(httpx.URL(r.json()["url"]).path)).status_code == 200
