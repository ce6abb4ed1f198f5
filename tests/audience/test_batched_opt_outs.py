"""A batched run's recipient whom the provider reports gone (Web Push 410) is opted out, and the
campaign report counts it as a provider opt-out, as it does for a triggered journey's send."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import httpx
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from store.tables import OptIn
from tests.audience.feed_helpers import batch_campaign, run_result
from tests.helpers import SectionKeys, add_integration, collect, create_campaign, new_dyid, step
from tests.provider_server import ProviderServer, Reply
from tests.providers.keys import ec_key, pem
from tests.providers.test_push_and_smtp import Browser

FAR = datetime(2100, 1, 1, tzinfo=UTC)


async def _subscriber(api: httpx.AsyncClient, sec: SectionKeys, browser: Browser) -> str:
    dyid = new_dyid()
    optin = {"name": "Push opt-in", "properties": {"dyType": "message-optin-v1", "channelType": "WEB_PUSH",
                                                   "pushID": json.dumps(browser.subscription)}}  # fmt: skip
    await collect(api, sec, dyid, optin)
    return dyid


async def test_a_batched_runs_gone_recipient_counts_as_a_provider_opt_out(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    gone, alive = "/push-gone/" + secrets.token_hex(4), "/push-ok/" + secrets.token_hex(4)
    fresh_provider.default(gone, Reply(410, "push subscription has unsubscribed or expired"))
    fresh_provider.default(alive, Reply(201))
    vapid = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    await add_integration(api, section, "web_push", kind="webpush", identifier_type="custom", config=vapid)
    await _subscriber(api, section, Browser(fresh_provider.url(gone)))
    await _subscriber(api, section, Browser(fresh_provider.url(alive)))
    spec = batch_campaign("scheduled", channels=("web_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    spec["variations"][0]["steps"] = [step("Only", channels=("web_push",))]
    cid = await create_campaign(api, section, spec)
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    assert r.status_code == 202, r.text
    progress = await run_result(env.client, str(r.json()["id"]))
    assert (progress.sent, progress.failed) == (1, 1), progress

    with store.session() as s:  # the gone subscription is opted out by the provider's answer
        rows = s.exec(select(OptIn).where(OptIn.section_id == section.id, OptIn.channel == "web_push")).all()
        assert sorted((o.opted_in, o.source) for o in rows) == [(False, "provider"), (True, "api")], rows
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt, params={"to": FAR.isoformat()})
    assert r.status_code == 200, r.text
    totals = r.json()["totals"]
    assert (totals["send_requests"], totals["failed_sends"], totals["provider_opt_outs"]) == (2, 1, 1), totals
