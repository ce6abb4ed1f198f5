"""Saved templates (CRUD, reuse, save-time validation) and the render preview endpoint."""

from __future__ import annotations

import httpx

from tests.helpers import (
    SectionKeys,
    add_integration,
    cart_campaign,
    collect,
    create_campaign,
    new_dyid,
    reachable_user,
    sync_cart,
)


async def test_template_crud_and_validation_errors_name_the_place(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Templates are validated on save (422 naming the place) and can be read, changed, deleted."""
    r = await api.post("/api/v1/templates", headers=section.mgmt,
                       json={"name": "T", "payload": {"a": {"b": "${Items in cart|name|item0}"}}})  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "payload", "a", "b"], r.text
    r = await api.post("/api/v1/templates", headers=section.mgmt, json={"name": "T", "payload": '{"a": '})
    assert r.status_code == 422 and "invalid JSON" in r.text
    r = await api.post("/api/v1/templates", headers=section.mgmt,
                       json={"name": "T", "channel": "email", "variables": ["Headline"],
                             "payload": '{"subject": "${Headline}", "to": "${User identifier}"}'})  # fmt: skip
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    assert r.json()["payload"] == {"subject": "${Headline}", "to": "${User identifier}"}
    r = await api.put(f"/api/v1/templates/{tid}", headers=section.mgmt,
                      json={"name": "T2", "variables": ["Headline"], "payload": {"subject": "${!Headline}"}})  # fmt: skip
    assert r.status_code == 200 and r.json()["name"] == "T2"
    assert [t["id"] for t in (await api.get("/api/v1/templates", headers=section.mgmt)).json()] == [tid]
    assert (await api.delete(f"/api/v1/templates/{tid}", headers=section.mgmt)).status_code == 204
    assert (await api.get(f"/api/v1/templates/{tid}", headers=section.mgmt)).status_code == 404


async def test_campaign_reuses_saved_template_and_preview_renders_it(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """A campaign refers to a template by id (checked at save); the preview renders it for a user."""
    await add_integration(api, section)
    r = await api.post("/api/v1/templates", headers=section.mgmt,
                       json={"name": "T", "variables": ["Headline"],
                             "payload": {"subject": "${Headline} ${Items in cart|name|item1}", "to": "${User identifier}"}})  # fmt: skip
    tid = r.json()["id"]
    spec = cart_campaign(steps=[{"name": "S", "messages": {"email": {"template_id": tid}}}])
    r = await api.post("/api/v1/campaigns", headers=section.mgmt, json=spec)
    assert r.status_code == 422 and "Headline" in r.text and "variations.0.steps.0.messages.email" in r.text
    bad = cart_campaign(steps=[{"name": "S", "messages": {"email": {"template_id": "tpl_nope"}}}])
    r = await api.post("/api/v1/campaigns", headers=section.mgmt, json=bad)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "template_id"
    spec["variations"][0]["variables"] = {"Headline": "Still thinking?"}
    cid = await create_campaign(api, section, spec, activate=False)
    assert (await api.delete(f"/api/v1/templates/{tid}", headers=section.mgmt)).status_code == 409

    await api.put("/api/v1/products", headers=section.mgmt, json=[{"sku": "p1", "name": 'Mug "Deluxe"'}])
    dyid, _ = await reachable_user(api, section)
    await collect(api, section, dyid, sync_cart([("p1", 9.0)]))
    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt, json={"user": dyid})
    assert r.status_code == 200, r.text
    assert r.json()["payload"] == {"subject": 'Still thinking? Mug "Deluxe"', "to": f"user{dyid}@example.com"}
    assert r.json()["unreachable"] is None
    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt, json={"user": "nobody"})
    assert r.status_code == 404
    # A user a send would skip: rendered all the same, with the reason the decision would give.
    anonymous = new_dyid()
    await collect(api, section, anonymous, sync_cart([("p1", 9.0)]))
    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt, json={"user": anonymous})
    assert r.status_code == 200 and r.json()["unreachable"] == "no_identifier", r.text
    assert r.json()["payload"]["to"] == ""


async def test_preview_renders_recommendations_from_catalog_and_activity(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Similar (same category) and popular (recent purchases/views) items, never the cart's own."""
    from tests.helpers import new_dyid, purchase

    await add_integration(api, section)
    await api.put("/api/v1/products", headers=section.mgmt, json=[
        {"sku": "mug", "name": "Mug", "categories": ["kitchen"], "url": "https://shop.example/mug"},
        {"sku": "cup", "name": "Cup", "categories": ["kitchen"]},
        {"sku": "pan", "name": "Pan", "categories": ["kitchen"], "in_stock": False},
        {"sku": "hat", "name": "Hat", "categories": ["hats"]},
    ])  # fmt: skip
    buyer = new_dyid()
    await collect(api, section, buyer, purchase([("hat", 5.0), ("mug", 9.0)]), purchase([("hat", 5.0)]))
    payload = {"similar": "${Recommendations|similar|name|item1} ${Recommendations|similar|name|item2}",
               "popular": "${Recommendations|popular|name|item1}",
               "link": "${Recommendations|similar|url|item1}"}  # fmt: skip
    spec = cart_campaign(steps=[{"name": "S", "messages": {"email": {"payload": payload}}}])
    cid = await create_campaign(api, section, spec, activate=False)
    dyid, _ = await reachable_user(api, section)
    await collect(api, section, dyid, sync_cart([("mug", 9.0)]))
    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt, json={"user": dyid})
    assert r.status_code == 200, r.text
    out = r.json()["payload"]
    assert out["similar"] == "Cup " and out["popular"] == "Hat"
    assert out["link"] == ""  # Cup has no URL


async def test_a_template_change_a_campaign_could_not_render_is_422(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Adding `${Other}` to a template that a campaign without `Other` uses is refused, naming the
    campaign and the message (saved, the campaign would render it empty and refuse its own next
    edit); once the campaign defines it, the same change saves."""
    r = await api.post("/api/v1/templates", headers=section.mgmt,
                       json={"name": "T", "variables": ["Headline"], "payload": {"subject": "${Headline}"}})  # fmt: skip
    tid = r.json()["id"]
    spec = cart_campaign(steps=[{"name": "S", "messages": {"email": {"template_id": tid}}}])
    spec["variations"][0]["variables"] = {"Headline": "Still thinking?"}
    cid = await create_campaign(api, section, spec, activate=False)
    changed = {"name": "T", "variables": ["Headline", "Other"], "payload": {"subject": "${Headline} ${Other}"}}
    r = await api.put(f"/api/v1/templates/{tid}", headers=section.mgmt, json=changed)
    assert r.status_code == 422, r.text
    assert cid in r.text and "variations.0.steps.0.messages.email" in r.text and "Other" in r.text, r.text
    assert (await api.get(f"/api/v1/templates/{tid}", headers=section.mgmt)).json()["payload"] == {"subject": "${Headline}"}
    spec["variations"][0]["variables"] = {"Headline": "Still thinking?", "Other": "10% off"}
    assert (await api.put(f"/api/v1/campaigns/{cid}", headers=section.mgmt, json=spec)).status_code == 200
    r = await api.put(f"/api/v1/templates/{tid}", headers=section.mgmt, json=changed)
    assert r.status_code == 200, r.text


async def test_render_without_a_channel_shows_the_one_a_send_would_use(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """The campaign's channel priority among the channels the user is reachable on, as the journey
    decides (it showed the step's first message, an SMS for a user a send would email)."""
    await add_integration(api, section)  # email only: SMS is unreachable for everyone
    messages = {"sms": {"payload": {"body": "sms ${User identifier}"}},
                "email": {"payload": {"subject": "mail", "to": "${User identifier}"}}}  # fmt: skip
    spec = cart_campaign(channel_priority=["sms", "email"], steps=[{"name": "S", "messages": messages}])
    cid = await create_campaign(api, section, spec, activate=False)
    dyid, _ = await reachable_user(api, section)
    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt, json={"user": dyid})
    assert r.status_code == 200 and r.json()["channel"] == "email" and r.json()["unreachable"] is None, r.text
    # Reachable on nothing: the priority's first channel, and why a send would skip it.
    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt, json={"user": new_dyid()})
    assert r.status_code == 404  # unknown until seen
    anonymous = new_dyid()
    await collect(api, section, anonymous, sync_cart([("p1", 9.0)]))
    r = await api.post(f"/api/v1/campaigns/{cid}/render", headers=section.mgmt, json={"user": anonymous})
    assert r.status_code == 200 and r.json()["channel"] == "sms" and r.json()["unreachable"] == "no_integration"
