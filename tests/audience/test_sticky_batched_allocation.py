"""A batched run allocates like a trigger: a recipient keeps the variation of their first journey in
the campaign (an earlier run's) while the spec has it, whatever the shares say since."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from domain.allocation import allocate
from domain.campaign import CampaignSpec
from store.engine import Store
from store.tables import Journey
from tests.audience.test_batched_reports import _push_shopper, _run, _scheduled
from tests.helpers import SectionKeys, add_integration, create_campaign, step


def _spec(a: int, b: int) -> dict[str, Any]:
    only = [step("Only", channels=("app_push",), payload={"title": "Sale"})]
    return _scheduled("Sale", 50, [{"id": "a", "name": "A", "share": a, "steps": only},
                                   {"id": "b", "name": "B", "share": b, "steps": only}])  # fmt: skip


def _hash(cid: str, spec: dict[str, Any], uid: str) -> str:
    return allocate(cid, uid, CampaignSpec.model_validate(spec).variations).id


async def test_a_recipient_keeps_the_variation_of_an_earlier_run_when_the_shares_change(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section, channel="app_push")
    before, after = _spec(50, 50), _spec(10, 90)
    cid = await create_campaign(api, section, before)
    for _ in range(80):  # a recipient of A whom the bare hash moves to B after the edit
        _, uid = await _push_shopper(api, section)
        if _hash(cid, before, uid) == "a" and _hash(cid, after, uid) == "b":
            break
    else:
        raise AssertionError("no such user in 80 tries")
    await _run(api, env, section, cid)
    # A one-off campaign's run is named after its send time (to the second): a later one is a new run.
    await asyncio.sleep(1.1)
    r = await api.put(f"/api/v1/campaigns/{cid}", json=_spec(10, 90), headers=section.mgmt)
    assert r.status_code == 200, r.text
    await _run(api, env, section, cid)
    with store.session() as s:
        rows = s.exec(select(Journey).where(Journey.campaign_id == cid, Journey.user_id == uid)).all()
    assert len(rows) == 2 and [j.variation_id for j in rows] == ["a", "a"], rows  # one row per run
