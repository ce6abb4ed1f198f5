"""PATCH /api/v1/section changes the global cap too, and refuses fields it does not know."""

from __future__ import annotations

import httpx

from tests.helpers import SectionKeys


async def test_global_cap_is_changed_and_cleared_and_unknown_fields_refused(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    r = await api.patch("/api/v1/section", json={"global_cap_messages": 100}, headers=section.mgmt)
    assert r.status_code == 200 and r.json()["global_cap_messages"] == 100, r.text
    r = await api.patch("/api/v1/section", json={"fallback_url": "https://shop.example/"}, headers=section.mgmt)
    assert r.json()["global_cap_messages"] == 100  # left out: kept
    assert (await api.get("/api/v1/section", headers=section.mgmt)).json()["global_cap_messages"] == 100
    r = await api.patch("/api/v1/section", json={"global_cap_messages": None}, headers=section.mgmt)
    assert r.json()["global_cap_messages"] is None  # null: the deployment default again
    r = await api.patch("/api/v1/section", json={"global_cap_messages": 0}, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "global_cap_messages"], r.text
    r = await api.patch("/api/v1/section", json={"global_cap": 3}, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "global_cap"], r.text
