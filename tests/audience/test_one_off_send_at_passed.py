"""A one-off scheduled campaign activated (or edited) after its `send_at` has passed fires no run: the
answer says so and how to start it now (api/routes/campaigns.py `_send_at_passed`). A trial's
activate answered 200 with `warnings: []` and `next_fire_times: []`, and nothing was ever sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.audience.feed_helpers import batch_campaign
from tests.helpers import SectionKeys, create_campaign
from workflows.ids import scheduled_run_id


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _once(at: datetime) -> dict[str, object]:
    return batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": at.isoformat()})


def _passed(body: dict[str, object], cid: str) -> list[str]:
    warnings = body["warnings"]
    assert isinstance(warnings, list)
    return [w for w in warnings if "has passed: no run fires" in w and f"/api/v1/campaigns/{cid}/runs" in w]


async def test_activating_or_editing_a_one_off_campaign_after_its_send_at_warns(
    api: httpx.AsyncClient, section: SectionKeys,
) -> None:  # fmt: skip
    past = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
    cid = await create_campaign(api, section, _once(past), activate=False)
    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert _passed(r.json(), cid) and past.isoformat() in _passed(r.json(), cid)[0], r.json()["warnings"]
    assert r.json()["schedule"]["next_fire_times"] == []

    # An edit of an active campaign keeping (or setting) a past instant says so too; a future one not.
    r = await api.put(f"/api/v1/campaigns/{cid}", json={**_once(past), "name": "renamed"}, headers=section.mgmt)
    assert r.status_code == 200 and _passed(r.json(), cid), r.text
    later = past + timedelta(days=2)
    r = await api.put(f"/api/v1/campaigns/{cid}", json=_once(later), headers=section.mgmt)
    assert r.status_code == 200 and not _passed(r.json(), cid), r.text

    # A paused campaign fires nothing anyway: no warning until it is activated.
    r = await api.put(f"/api/v1/campaigns/{cid}", json=_once(past), headers=section.mgmt)
    assert _passed(r.json(), cid)
    r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
    assert r.status_code == 200 and not _passed(r.json(), cid), r.text
    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert r.status_code == 200 and _passed(r.json(), cid), r.text

    # Started by hand as the warning says: that run is the slot's; activating again does not warn.
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    assert r.status_code == 202 and r.json()["id"] == scheduled_run_id(cid, past), r.text
    assert r.json()["campaign_version"] == 4  # created, renamed, moved later, moved back
    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert r.status_code == 200 and not _passed(r.json(), cid), r.text


async def test_a_one_off_campaign_activated_before_its_send_at_does_not_warn(
    api: httpx.AsyncClient, section: SectionKeys,
) -> None:  # fmt: skip
    later = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    cid = await create_campaign(api, section, _once(later), activate=False)
    r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["warnings"] == [], r.text
