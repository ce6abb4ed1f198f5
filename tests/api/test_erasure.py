"""Erasure of a person (GDPR art. 17): `DELETE /api/v1/users/{ref}` ends their journeys in Temporal
(reason "erased"), deletes or blanks their personal data in the store (the user row stays as an
empty tombstone), keeps the pseudonymous facts reports count, and leaves nothing that links their
old dyid or CUID to them: the next visit with either is a new, unrelated user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx
from sqlalchemy import Table, func
from sqlmodel import SQLModel, select
from temporalio.testing import WorkflowEnvironment

from domain.events import email_hash
from security.crypto import SecretBox
from store.cart_tables import CartEntry
from store.engine import Store
from store.identity_tables import UserAlias
from store.report_tables import ReportAttribution
from store.subscriber_tables import SubscriberList, set_table_name, subscriber_set
from store.subscribers import create_set, index_set
from store.tables import Device, Event, Journey, OptIn, OutboxMessage, Send, User, UserIdentifier
from store.tracking_tables import TrackingHit
from tests.helpers import (
    SectionKeys,
    add_integration,
    app_state,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    eventually,
    journey_handle,
    journey_result,
    login,
    make_section,
    new_dyid,
    outbox,
    reachable_user,
    step,
)
from workflows.journey import JourneyWorkflow

T = TypeVar("T", bound=SQLModel)


def _rows(store: Store, table: type[T], **where: object) -> list[T]:
    with store.session() as s:
        q = select(table)
        for name, value in where.items():
            q = q.where(getattr(table, name) == value)
        return list(s.exec(q).all())


async def test_erasure_ends_the_journey_and_leaves_no_personal_data(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    await add_integration(api, section)
    two_steps = [step("First"), step("Second", wait="P30D")]
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H", steps=two_steps))
    dyid, uid = await reachable_user(api, section)
    email = email_for(dyid)
    handle = journey_handle(env.client, section, cid, uid)
    with env.with_time_skipping_disabled():
        await collect(api, section, dyid, add_to_cart("sku-1"))

        async def waiting() -> None:
            assert (await handle.query(JourneyWorkflow.current_state)).status == "waiting"

        await eventually(waiting)
        await env.fast_forward(handle, timedelta(hours=1, minutes=1))  # the first step is sent

        async def first_sent() -> None:
            assert [m["recipient"] for m in await outbox(api, section)] == [email]
            assert (await handle.query(JourneyWorkflow.current_state)).step_index == 1  # now waiting 30 days

        await eventually(first_sent)

        r = await api.delete(f"/api/v1/users/{dyid}", headers=section.mgmt)

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == uid and body["journeys_exited"] == 1, body
    erased = body["erased"]
    identity = (erased["opt_ins"], erased["identifiers"], erased["devices"], erased["aliases"])
    assert identity == (1, 1, 1, 0) and erased["outbox_messages"] == 1, body
    assert erased["events"] >= 2 and erased["cart_entries"] == 1 and erased["user_profiles"] == 1, body
    result = await journey_result(env.client, section, cid, uid)
    assert (result.status, result.exit_reason, result.sent) == ("exited", "erased", 1), result

    assert _rows(store, OptIn, section_id=section.id) == []  # the encrypted email is gone
    assert _rows(store, OptIn, value_hash=email_hash(email)) == []
    assert _rows(store, UserIdentifier, user_id=uid) == [] and _rows(store, Device, user_id=uid) == []
    assert _rows(store, Event, user_id=uid) == [] and _rows(store, CartEntry, user_id=uid) == []
    assert await outbox(api, section) == []  # the built-in outbox kept the address in clear
    [user] = _rows(store, User, id=uid)
    assert (user.cuid, user.cuid_type, user.attributes, user.cart, user.locale) == (None, None, {}, [], None)
    [send] = _rows(store, Send, user_id=uid)  # the first step's send: a report fact, nothing after it
    [journey] = _rows(store, Journey, user_id=uid)
    assert (journey.status, journey.exit_reason) == ("exited", "erased")
    report = await api.get(
        f"/api/v1/campaigns/{cid}/report", headers=section.mgmt,
        params={"to": (datetime.now(UTC) + timedelta(days=40)).isoformat()},
    )  # fmt: skip
    assert report.status_code == 200, report.text
    totals = report.json()["variations"][0]["metrics"]
    assert report.json()["totals"]["users_triggered"] == 1 and totals["send_requests"]["count"] == 1, report.json()

    await collect(api, section, dyid, login(email))  # the same device and CUID come back: a stranger
    again = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert again.status_code == 200 and again.json()["id"] != uid, again.text
    assert _rows(store, Device, user_id=uid) == [] and _rows(store, User, id=uid)[0].cuid is None

    twice = await api.delete(f"/api/v1/users/{uid}", headers=section.mgmt)  # idempotent: zero counts
    assert twice.status_code == 200, twice.text
    assert twice.json()["journeys_exited"] == 0 and not any(twice.json()["erased"].values()), twice.json()


async def test_erasure_covers_merged_ids_gone_workflows_and_subscriber_lists(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store
) -> None:
    """An anonymous device merged into the person (an alias) goes with them; a journey whose workflow
    was terminated outside Rejoin has its row ended; the active subscriber-list set loses them."""
    integration = await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, section)
    email = email_for(dyid)
    with env.with_time_skipping_disabled():  # the journey waits its hour in real time
        await collect(api, section, dyid, add_to_cart("sku-1"))
    second_device = new_dyid()
    await collect(api, section, second_device, {"name": "Browse", "properties": {}})  # anonymous: a user of its own
    await collect(api, section, second_device, login(email))  # merged into the person
    [alias] = _rows(store, UserAlias, canonical_id=uid)
    [row] = _rows(store, Journey, user_id=uid, status="active")
    await env.client.get_workflow_handle(row.workflow_id).terminate("operator")
    hashes = [email_hash(email), email_hash("someone@else.example")]
    listed = _list_with(store, app_state(api).box, section, integration["id"], hashes)
    _facts_with_traces(store, section, cid, uid)

    r = await api.delete(f"/api/v1/users/{alias.alias_id}", headers=section.mgmt)  # a merged id finds the person

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == uid and body["journeys_exited"] == 1, body
    assert body["erased"]["aliases"] == 1 and body["erased"]["devices"] == 2, body
    assert body["erased"]["subscriber_list_entries"] == 1, body
    assert (body["erased"]["tracking_hit_user_agents"], body["erased"]["attribution_order_ids"]) == (1, 2), body
    [hit] = _rows(store, TrackingHit, user_id=uid)
    orders = {a.transaction_id for a in _rows(store, ReportAttribution, user_id=uid)}
    assert hit.user_agent is None and len(orders) == 1 and orders != {"order-42"}, orders  # still one order
    [row] = _rows(store, Journey, id=row.id)
    assert (row.status, row.exit_reason) == ("exited", "erased")
    assert _rows(store, UserAlias, canonical_id=uid) == []
    for user_id in (uid, alias.alias_id):
        [user] = _rows(store, User, id=user_id)
        assert (user.cuid, user.attributes, user.cart) == (None, {}, [])
    with store.session() as s:
        left = s.connection().execute(select(func.count()).select_from(listed)).scalar_one()
    assert left == 1  # the other subscriber stays
    for ref in (dyid, second_device, email_hash(email)):
        assert (await api.delete(f"/api/v1/users/{ref}", headers=section.mgmt)).status_code == 404


def _facts_with_traces(store: Store, section: SectionKeys, campaign_id: str, user_id: str) -> None:
    """Report facts of the person holding what could lead back to them: a click's user agent, and
    one order (two attributed events of one transaction id, which the report counts once)."""
    now = datetime.now(UTC)
    with store.session() as s:
        s.add(TrackingHit(
            section_id=section.id, campaign_id=campaign_id, variation_id="a", step_index=0, channel="email",
            send_key="k", user_id=user_id, kind="click", source="link", user_agent="Mozilla/5.0 (her phone)", at=now,
        ))  # fmt: skip
        for event_id in ("evt_a", "evt_b"):
            s.add(ReportAttribution(
                campaign_id=campaign_id, event_id=event_id, user_id=user_id, cohort_hour=now, kind="purchase",
                value=10.0, transaction_id="order-42", at=now, click_at=now, lag_us=0, variation_id="a",
                channel="email", step_index=0,
            ))  # fmt: skip


def _list_with(store: Store, box: SecretBox, section: SectionKeys, integration_id: str, hashes: list[str]) -> Table:
    """An active subscriber list of the integration whose set holds `hashes` (keyed as syncs key them),
    with values sealed under the app's key: every later test sharing the database (key rotation)
    reads them."""
    name = set_table_name(integration_id, 1)
    table = subscriber_set(name)
    now = datetime.now(UTC)
    with store.session() as s:
        create_set(s, name)
        s.connection().execute(
            table.insert(),
            [
                {"value_hash": bytes.fromhex(h)[:16], "value_enc": sealed}
                for h, sealed in zip(hashes, box.seal_many([b"x"] * len(hashes)), strict=True)
            ],
        )
        index_set(s, name)
        s.add(SubscriberList(
            integration_id=integration_id, section_id=section.id, channel="email", bucket="b", prefix="p/",
            iam_user="u", active_generation=1, activated_at=now, next_generation=2, created_at=now,
        ))  # fmt: skip
    return table


async def test_erasure_needs_the_sections_management_key(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    await add_integration(api, section)
    dyid, uid = await reachable_user(api, section)
    assert (await api.delete("/api/v1/users/nobody", headers=section.mgmt)).status_code == 404
    ingestion = {"Authorization": f"Bearer {section.ingestion}"}
    assert (await api.delete(f"/api/v1/users/{uid}", headers=ingestion)).status_code == 403
    other = await make_section(api, "other shop")
    for ref in (uid, dyid):
        assert (await api.delete(f"/api/v1/users/{ref}", headers=other.mgmt)).status_code == 404
    assert (await api.get(f"/api/v1/users/{uid}", headers=section.mgmt)).json()["cuid"] is not None  # untouched
