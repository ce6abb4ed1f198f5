"""A user held out of a campaign is counted once: their later triggers start no journey (each one
started, and at once ended, one more journey row and workflow)."""

from __future__ import annotations

import httpx
from sqlmodel import select

from store.engine import Store
from store.tables import Event, Journey
from tests.helpers import SectionKeys, add_to_cart, collect, create_campaign, holdout_campaign, new_dyid


async def test_later_triggers_of_a_held_out_user_start_nothing(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    cid = await create_campaign(api, section, holdout_campaign())
    dyid = new_dyid()
    acks = [await collect(api, section, dyid, add_to_cart(f"sku-{i}")) for i in range(3)]
    with store.session() as s:
        journeys = s.exec(select(Journey).where(Journey.campaign_id == cid)).all()
        commands = [s.get(Event, a["event_ids"][0]).commands for a in acks]  # type: ignore[union-attr]
    assert [(j.variation_id, j.status) for j in journeys] == [("ctl", "holdout")], journeys
    assert [[c["action"] for c in cmds] for cmds in commands] == [["trigger"], [], []], commands
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt)
    [holdout] = [v for v in r.json()["variations"] if v["control"]]
    assert holdout["users"] == 1, holdout
