"""Pausing (or archiving) a campaign while one of its batched runs sends says what that costs.

A journey's later steps send again after a resume; a batched run's recipients not yet sent are
skipped (`campaign_paused`) and the run ends: it does not resume on activate (docs/campaigns.md).
A trial's marketer paused a run at 210 of 1,500 sent and lost the other 1,260 without a word.
"""

from __future__ import annotations

import httpx

from store.broadcast_tables import BroadcastRun
from store.engine import Store
from store.tables import now_utc
from tests.helpers import SectionKeys, cart_campaign, create_campaign, step


def _run(store: Store, sec: SectionKeys, cid: str, run_id: str, state: str, sent: int) -> None:
    with store.session() as s:
        s.add(BroadcastRun(id=run_id, section_id=sec.id, campaign_id=cid, campaign_version=1, reason="schedule",
                           state=state, total=1500, sent=sent, skipped=10, failed=2, created_at=now_utc()))  # fmt: skip


async def test_pausing_while_a_run_sends_warns_that_its_rest_is_skipped(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await create_campaign(api, section, cart_campaign(steps=[step("Only")]))
    _run(store, section, cid, "run_sending", "sending", 210)
    _run(store, section, cid, "run_done", "done", 1488)

    r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)

    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == [
        "batched run run_sending (sending): its 1278 recipients not yet sent will be skipped (campaign_paused); "
        "a run does not resume on activate"
    ]
    again = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)  # no change: no warning
    assert again.status_code == 200 and again.json()["warnings"] == []
    resumed = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=section.mgmt)
    assert resumed.status_code == 200 and resumed.json()["warnings"] == []


async def test_pausing_with_no_run_sending_warns_of_nothing(api: httpx.AsyncClient, section: SectionKeys) -> None:
    cid = await create_campaign(api, section, cart_campaign(steps=[step("Only")]))
    r = await api.post(f"/api/v1/campaigns/{cid}/pause", headers=section.mgmt)
    assert r.status_code == 200 and r.json()["warnings"] == [], r.text
