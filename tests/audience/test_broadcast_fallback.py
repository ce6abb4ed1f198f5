"""Batched recipients fall back to the next channel after a permanent failure, as a journey's
step does (docs/campaigns.md), and the journeys API says what became of a batched recipient."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.broadcast_tables import BroadcastRecipient
from store.engine import Store
from store.tables import OptIn, User
from tests.audience.feed_helpers import (
    batch_campaign,
    campaign_sends,
    create_feed,
    csv_bytes,
    push_user,
    run_result,
    upload_feed,
    zone_at_local_hour,
)
from tests.helpers import SectionKeys, add_integration, create_campaign, outbox, reachable_user
from tests.provider_server import ProviderServer, Reply


@pytest.fixture(autouse=True)
def _s3(s3: str) -> str:
    return s3


def _phone() -> str:
    return "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))


async def _loyalty_run(
    api: httpx.AsyncClient, env: WorkflowEnvironment, sec: SectionKeys, store: Store, spec: dict[str, Any],
    people: list[str],
) -> tuple[str, str]:  # fmt: skip
    """A Change in User Attribute campaign (loyalty Bronze -> Silver) run over `people`: (campaign, run)."""
    spec["attribute_change"] = {
        "attribute": "loyalty", "old": [{"op": "eq", "value": "Bronze"}], "new": [{"op": "eq", "value": "Silver"}],
    }  # fmt: skip
    cid = await create_campaign(api, sec, spec)
    with store.session() as s:
        cuids = [str(u.cuid) for u in (s.get(User, uid) for uid in people) if u is not None]
    feed = await create_feed(api, sec, kind="user")
    await upload_feed(api, env.client, sec, feed, csv_bytes("cuid,loyalty", *(f"{c},Bronze" for c in cuids)))
    summary = await upload_feed(api, env.client, sec, feed, csv_bytes("cuid,loyalty", *(f"{c},Silver" for c in cuids)))
    (run_id,) = summary.runs
    return cid, run_id


async def test_a_permanent_sms_failure_falls_back_to_email(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    fresh_provider.script("/sms", Reply(400, {"message": "invalid 'To' number"}))
    await add_integration(api, section, channel="sms", kind="custom_http", config={"url": fresh_provider.url("/sms")})
    await add_integration(api, section)  # email: the outbox
    _, uid = await reachable_user(api, section, phone=_phone())
    spec = batch_campaign("user_attribute_change", channels=("sms", "email"))
    cid, run_id = await _loyalty_run(api, env, section, store, spec, [uid])
    progress = await run_result(env.client, run_id)
    assert (progress.sent, progress.failed, progress.skipped) == (1, 0, 0), progress
    sends = {s.channel: s for s in await campaign_sends(store, cid)}
    assert sends["sms"].status == "failed" and sends["sms"].provider_status == 400, sends
    assert sends["email"].status == "accepted", sends
    assert len(await outbox(api, section)) == 1
    with store.session() as s:
        rec = s.exec(select(BroadcastRecipient).where(BroadcastRecipient.run_id == run_id)).one()
    assert (rec.status, rec.channel) == ("sent", "email"), rec
    assert rec.reason is not None and rec.reason.startswith("after sms:") and "invalid" in rec.reason, rec


async def test_a_failure_on_every_channel_is_a_failed_recipient(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    fresh_provider.script("/sms2", Reply(400, {"message": "invalid 'To' number"}))
    fresh_provider.script("/email2", Reply(422, {"message": "mailbox syntax"}))
    await add_integration(api, section, channel="sms", kind="custom_http", config={"url": fresh_provider.url("/sms2")})
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url("/email2")})
    _, uid = await reachable_user(api, section, phone=_phone())
    spec = batch_campaign("user_attribute_change", channels=("sms", "email"))
    cid, run_id = await _loyalty_run(api, env, section, store, spec, [uid])
    progress = await run_result(env.client, run_id)
    assert (progress.sent, progress.failed) == (0, 1), progress
    with store.session() as s:
        rec = s.exec(select(BroadcastRecipient).where(BroadcastRecipient.run_id == run_id)).one()
    assert (rec.status, rec.channel) == ("failed", "email") and "mailbox syntax" in (rec.reason or ""), rec
    assert sorted((x.channel, x.status) for x in await campaign_sends(store, cid)) == [
        ("email", "failed"), ("sms", "failed"),
    ]  # fmt: skip


async def test_the_journeys_api_says_why_a_batched_recipient_got_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    push = {"url": fresh_provider.url("/p")}
    await add_integration(api, section, channel="app_push", kind="custom_http", config=push)
    opted_out = await push_user(api, section, store)
    with store.session() as s:  # the first user's token opted out
        for row in s.exec(select(OptIn).where(OptIn.section_id == section.id)).all():
            row.opted_in = False
            s.add(row)
    sent_to = await push_user(api, section, store)
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()})
    cid = await create_campaign(api, section, spec)
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=section.mgmt)
    run_id = str(r.json()["id"])
    assert (await run_result(env.client, run_id)).sent == 1

    async def journey_of(uid: str) -> dict[str, Any]:
        r = await api.get(f"/api/v1/users/{uid}/journeys", headers=section.mgmt)
        assert r.status_code == 200, r.text
        [journey] = [j for j in r.json() if j["campaign_id"] == cid]
        return dict(journey)

    skipped = await journey_of(opted_out)
    assert [(d["outcome"], d["reason"]) for d in skipped["decisions"]] == [("skipped", "not_opted_in")], skipped
    sent = await journey_of(sent_to)
    assert [(d["outcome"], d["channel"]) for d in sent["decisions"]] == [("sent", "app_push")], sent
    assert [x["status"] for x in sent["sends"]] == ["accepted"]
    # A recipient still waiting (its send window, a retry) is no completed journey.
    later = datetime(2099, 1, 1, tzinfo=UTC)
    with store.session() as s:
        rec = s.get(BroadcastRecipient, (run_id, opted_out))
        assert rec is not None
        rec.status, rec.not_before, rec.reason = "pending", later, "waiting for the send window (Etc/GMT)"
        s.add(rec)
    waiting = await journey_of(opted_out)
    assert (waiting["status"], waiting["ended_at"]) == ("waiting", None), waiting
    assert [(d["outcome"], d["reason"]) for d in waiting["decisions"]] == [
        ("waiting", "waiting for the send window (Etc/GMT)")
    ]
