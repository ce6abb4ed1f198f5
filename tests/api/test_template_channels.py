"""A saved template's channel is enforced: a campaign cannot use an SMS template on email, and a
template in use cannot be moved to another channel; template bodies refuse unknown fields."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import SectionKeys, cart_campaign, create_campaign


async def _template(api: httpx.AsyncClient, section: SectionKeys, **body: Any) -> str:
    r = await api.post("/api/v1/templates", headers=section.mgmt, json={"name": "T", "payload": {"text": "Hi"}, **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _on_email(template_id: str) -> dict[str, Any]:
    return cart_campaign(steps=[{"name": "S", "messages": {"email": {"template_id": template_id}}}])


async def test_a_template_is_used_only_on_its_channel(api: httpx.AsyncClient, section: SectionKeys) -> None:
    sms = await _template(api, section, channel="sms")
    r = await api.post("/api/v1/campaigns", headers=section.mgmt, json=_on_email(sms))
    assert r.status_code == 422 and "for sms, not email" in r.text, r.text
    assert r.json()["detail"][0]["loc"][-1] == "template_id"
    await create_campaign(api, section, _on_email(await _template(api, section, channel="email")))
    await create_campaign(api, section, _on_email(await _template(api, section)))  # no channel: any


async def test_a_template_in_use_keeps_its_channel(api: httpx.AsyncClient, section: SectionKeys) -> None:
    tid = await _template(api, section, channel="email")
    await create_campaign(api, section, _on_email(tid))
    moved = {"name": "T", "channel": "sms", "payload": {"text": "Hi"}}
    r = await api.put(f"/api/v1/templates/{tid}", headers=section.mgmt, json=moved)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "channel"] and "on email" in r.text, r.text
    r = await api.put(f"/api/v1/templates/{tid}", headers=section.mgmt, json={**moved, "channel": "email"})
    assert r.status_code == 200, r.text


async def test_template_bodies_refuse_unknown_fields_and_empty_variable_names(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    base = {"name": "T", "payload": {"text": "Hi"}}
    r = await api.post("/api/v1/templates", headers=section.mgmt, json={**base, "extra": 1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "extra"], r.text
    r = await api.post("/api/v1/templates", headers=section.mgmt, json={**base, "variables": ["Headline", ""]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "variables", 1], r.text
