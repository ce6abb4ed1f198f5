"""Management API: validation errors naming fields, lifecycle, versions, keys and isolation."""

from __future__ import annotations

import httpx

from tests.helpers import SectionKeys, cart_campaign, create_campaign, make_section, step


async def test_bad_campaign_spec_is_422_naming_the_field(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """A wait under 5 minutes is rejected with loc pointing at trigger.wait."""
    r = await api.post("/api/v1/campaigns", json=cart_campaign(wait="PT1M"), headers=section.mgmt)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][-2:] == ["trigger", "wait"], r.json()


async def test_durations_are_iso_8601_or_seconds_also_as_text(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """As the docs say, a wait is ISO 8601 or seconds: `"300"` is 300 seconds like `300`; anything
    else is refused with the accepted forms named, at the field."""
    for wait in (300, "300", "PT5M"):
        r = await api.post("/api/v1/campaigns/validate", json=cart_campaign(wait=wait), headers=section.mgmt)
        assert r.status_code == 200, (wait, r.text)
    r = await api.post("/api/v1/campaigns", json=cart_campaign(wait="5m"), headers=section.mgmt)
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"][-2:] == ["trigger", "wait"], error
    assert "ISO 8601 duration (PT4H, P3D) or a number of seconds; got '5m'" in error["msg"], error


async def test_rules_across_fields_name_the_field_in_loc(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Errors found across fields (shares, channels, steps, custom triggers, localized texts) name the
    field in `loc`, not just `["body"]` with the field in the message."""
    two = cart_campaign()
    two["variations"] = [{**two["variations"][0], "share": 60}, {**two["variations"][0], "id": "b", "share": 30}]
    custom = cart_campaign(type="custom_trigger")
    steps = cart_campaign(steps=[step("A"), step("B")])
    texts = cart_campaign()
    texts["variations"][0]["variables"] = {"Headline": {"fr_FR": "Bonjour"}}
    channels = cart_campaign(channel_priority=["sms"])
    holdout_only = cart_campaign(variations=[{"id": "h", "name": "H", "share": 100, "control": True}])
    cases = [
        (holdout_only, ["body", "variations"], "needs a variation that is not the control"),
        (two, ["body", "variations"], "shares must sum to 100 (got 90)"),
        (custom, ["body", "trigger", "event_name"], "required for a custom_trigger campaign"),
        (steps, ["body", "variations", 0, "steps", 1, "wait"], "required (the wait after the previous step)"),
        (texts, ["body", "variations", 0, "variables", "Headline"], "need a 'default' entry"),
        (channels, ["body", "variations", 0, "steps", 0, "messages"], "not listed in channel_priority"),
    ]
    for spec, loc, message in cases:
        r = await api.post("/api/v1/campaigns/validate", json=spec, headers=section.mgmt)
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        assert error["loc"] == loc and message in error["msg"], error


async def test_validate_endpoint_explains_what_a_type_needs(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Validation works without saving; a scheduled campaign without its schedule is refused clearly."""
    ok = await api.post("/api/v1/campaigns/validate", json=cart_campaign(), headers=section.mgmt)
    assert ok.status_code == 200 and ok.json()["valid"] is True
    bad = await api.post("/api/v1/campaigns/validate", json=cart_campaign(type="scheduled"), headers=section.mgmt)
    assert bad.status_code == 422 and "schedule: required for a scheduled campaign" in bad.text
    assert bad.json()["detail"][0]["loc"] == ["body", "schedule"]


async def test_lifecycle_transitions(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """draft -> active -> paused -> active -> archived; archived is final."""
    cid = await create_campaign(api, section, cart_campaign(), activate=False)
    for action, status in [("activate", "active"), ("pause", "paused"), ("activate", "active"), ("archive", "archived")]:
        r = await api.post(f"/api/v1/campaigns/{cid}/{action}", headers=section.mgmt)
        assert (r.status_code, r.json()["status"]) == (200, status)
    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert r.status_code == 409 and "archived" in r.text


async def test_update_creates_a_new_version(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Changing the spec bumps the version; the old version stays readable."""
    cid = await create_campaign(api, section, cart_campaign())
    r = await api.put(f"/api/v1/campaigns/{cid}", json=cart_campaign(steps=[step("Renamed")]), headers=section.mgmt)
    assert r.json()["version"] == 2
    same = await api.put(f"/api/v1/campaigns/{cid}", json=cart_campaign(steps=[step("Renamed")]), headers=section.mgmt)
    assert same.json()["version"] == 2
    v1 = await api.get(f"/api/v1/campaigns/{cid}/versions/1", headers=section.mgmt)
    assert v1.json()["spec"]["variations"][0]["steps"][0]["name"] == "Reminder"


async def test_keys_and_section_isolation(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Missing/wrong keys 401, ingestion key on management 403, another section sees nothing."""
    assert (await api.get("/api/v1/campaigns")).status_code == 401
    assert (await api.get("/api/v1/campaigns", headers={"Authorization": "Bearer rjk_x_y"})).status_code == 401
    assert (await api.get("/api/v1/campaigns", headers={"Authorization": f"Bearer {section.ingestion}"})).status_code == 403
    cid = await create_campaign(api, section, cart_campaign())
    other = await make_section(api, "other")
    assert (await api.get(f"/api/v1/campaigns/{cid}", headers=other.mgmt)).status_code == 404
    assert (await api.get("/api/v1/campaigns", headers=other.mgmt)).json() == []
    r = await api.post("/api/v1/keys", json={"kind": "management"}, headers=section.mgmt)
    new_key = r.json()
    hdr = {"Authorization": f"Bearer {new_key['key']}"}
    assert (await api.get("/api/v1/campaigns", headers=hdr)).status_code == 200
    assert (await api.delete(f"/api/v1/keys/{new_key['id']}", headers=section.mgmt)).status_code == 204
    assert (await api.get("/api/v1/campaigns", headers=hdr)).status_code == 401


async def test_sections_need_the_admin_key(api: httpx.AsyncClient) -> None:
    """Creating a section without the admin key is refused."""
    r = await api.post("/api/v1/sections", json={"name": "x"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


async def test_api_keys_stored_hashed(api: httpx.AsyncClient, section: SectionKeys, store: object) -> None:
    """Only a hash of each key's secret is stored."""
    from sqlmodel import select

    from store.engine import Store
    from store.tables import ApiKey

    assert isinstance(store, Store)
    with store.session() as s:
        rows = s.exec(select(ApiKey).where(ApiKey.section_id == section.id)).all()
    secrets = {section.management.split("_", 2)[2], section.ingestion.split("_", 2)[2]}
    assert rows and all(r.secret_hash not in secrets and len(r.secret_hash) == 64 for r in rows)
