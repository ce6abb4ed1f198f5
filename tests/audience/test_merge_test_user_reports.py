"""A test user's journeys stay out of the campaign report even when a merge gave them a cohort: an
anonymous, non-test device triggers the campaign, then logs in as a test-flagged person, whose own
(test) journey then sends. Only the device's send counts, live, in the raw computation and after a
rebuild (docs/reports.md, "Who and what is counted")."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment

from store import report_rollup
from store.engine import Store
from store.tables import Journey, Send
from tests.audience.test_merge_reports import FAR, PAYLOAD, SINCE, _anonymous_push_device, _engage, _token, _user_id
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    journey_result,
    login,
    new_dyid,
    step,
)
from tests.tracking.test_tracking_api import age_send


async def _report(api: httpx.AsyncClient, sec: SectionKeys, cid: str, *, counters: bool) -> dict[str, Any]:
    """Send requests, clicks and impressions from the counters (whole hours) or the raw computation."""
    params = {"to": FAR.isoformat(), **({"from": SINCE.isoformat()} if counters else {})}
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=sec.mgmt, params=params)
    assert r.status_code == 200, r.text
    totals = r.json()["totals"]
    return {k: totals[k]["count"] if isinstance(totals[k], dict) else totals[k]
            for k in ("send_requests", "clicks", "impressions")}  # fmt: skip


async def test_a_test_journey_counts_nowhere_when_a_merge_gave_its_user_a_cohort(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    await add_integration(api, section, channel="app_push")
    spec = cart_campaign(channel_priority=["app_push"], steps=[step("Push", channels=("app_push",), payload=PAYLOAD)])
    cid = await create_campaign(api, section, spec)

    # The person: identified, reachable by push, flagged a test user before carting.
    person_dyid = new_dyid()
    optin = {"name": "Opt-in", "properties": {"dyType": "message-optin-v1", "pushID": "tok-" + secrets.token_hex(6),
                                              "channelType": "APP_PUSH"}}  # fmt: skip
    await collect(api, section, person_dyid, optin, login(email_for(person_dyid)))
    person = await _user_id(api, section, person_dyid)
    r = await api.put(f"/api/v1/users/{person_dyid}/test", json={"is_test": True}, headers=section.mgmt)
    assert r.status_code == 200, r.text

    # An anonymous, non-test device triggers first (a send that counts), then logs in as the person.
    device, anon = await _anonymous_push_device(api, env, section, cid)
    await collect(api, section, device, login(email_for(person_dyid)))
    assert await _user_id(api, section, device) == person

    # The person's own (test) journey sends, live, onto the cohort the merge moved to them; its push
    # is tapped and opened.
    await collect(api, section, person_dyid, add_to_cart("sku-2", 50.0))
    result = await journey_result(env.client, section, cid, person)
    assert [d.outcome for d in result.decisions] == ["sent"], result.decisions
    with store.session() as s:
        rows = s.exec(select(Send.key, Journey.is_test).join(Journey, col(Journey.id) == col(Send.journey_id))
                      .where(Send.campaign_id == cid, Send.status == "accepted")).all()  # fmt: skip
    assert sorted(test for _, test in rows) == [False, True], rows
    (test_key,) = [key for key, test in rows if test]
    age_send(store, test_key)
    rjt = await _token(api, section, test_key)
    recorded = await _engage(api, section, person_dyid, rjt, "PN_IMP", "PN_CLICK")
    assert recorded["recorded"] == 2, recorded

    expected = {"send_requests": 1, "clicks": 0, "impressions": 0}  # the device's send alone
    for counters in (True, False):
        assert await _report(api, section, cid, counters=counters) == expected, counters
    with store.session() as s:
        assert report_rollup.rebuild(s, [cid]) == 1
    assert await _report(api, section, cid, counters=True) == expected
    assert anon != person
