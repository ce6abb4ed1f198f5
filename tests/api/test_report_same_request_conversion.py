"""A purchase sent in the same ingestion request as, and after, the trigger that enrolled its buyer
is an enrolled-user conversion in the counters too, as it is in the raw path and after a rebuild
(docs/reports.md, "Holdout comparison"). Events of one request are received at the request's time
plus their position in microseconds, so such a purchase is strictly after the enrollment. The
counters missed it: the cohort is registered when the request's enrollments are written, after its
events, so a backend batching add-to-cart and purchase lost the conversion in the report.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from api.routes.reports import build_report
from store import report_rollup
from store.campaigns import load_spec
from store.engine import Store
from store.tables import Campaign
from tests.helpers import (
    SectionKeys, add_to_cart, collect, create_campaign, email_for, holdout_campaign, login, new_dyid, purchase,
)  # fmt: skip


def _enrolled(store: Store, cid: str, *, raw: bool) -> dict[str, Any]:
    """The holdout's enrolled conversions over whole hours around now: from the counters, or raw."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with store.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        body = build_report(s, c, load_spec(s, cid, c.version), hour - timedelta(hours=2), hour + timedelta(hours=2),
                            raw=raw)  # fmt: skip
    [holdout] = [v for v in body["variations"] if v["control"]]
    return dict(holdout["enrolled_conversions"])


async def _check(api: httpx.AsyncClient, store: Store, section: SectionKeys, cid: str, revenue: float) -> None:
    counters, raw = _enrolled(store, cid, raw=False), _enrolled(store, cid, raw=True)
    assert counters == raw
    assert (counters["purchases"], counters["buyers"], counters["revenue"]) == (1, 1, revenue)
    # The default range (campaign creation -> now) reads these users as a raw edge: the same.
    body = (await api.get(f"/api/v1/campaigns/{cid}/report", headers=section.mgmt)).json()
    [holdout] = [v for v in body["variations"] if v["control"]]
    assert holdout["enrolled_conversions"] == counters
    with store.session() as s:  # and a rebuild from the raw tables changes nothing
        report_rollup.rebuild(s, [cid])
    assert _enrolled(store, cid, raw=False) == counters


async def test_a_new_users_purchase_after_the_trigger_in_the_same_request_converts(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await create_campaign(api, section, holdout_campaign())
    # A repeat of the order in the same request counts once, as across requests.
    order = purchase([("sku-1", 25.0)], tx="order-1")
    await collect(api, section, new_dyid(), add_to_cart("sku-1", 25.0), order, order)
    await _check(api, store, section, cid, 25.0)


async def test_a_known_users_purchase_after_the_trigger_in_the_same_request_converts(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    cid = await create_campaign(api, section, holdout_campaign())
    dyid = new_dyid()
    await collect(api, section, dyid, login(email_for(dyid)))  # identified, stored, never enrolled
    await collect(api, section, dyid, add_to_cart("sku-1", 40.0), purchase([("sku-1", 40.0)]))
    await _check(api, store, section, cid, 40.0)


async def test_a_purchase_after_the_trigger_then_a_login_that_merges_converts_for_the_person(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """The login merges the device's user into the CUID's owner mid-request: the enrollment and the
    purchase are the owner's, and so is the conversion."""
    cid = await create_campaign(api, section, holdout_campaign())
    owner = new_dyid()
    await collect(api, section, owner, login(email_for(owner)))
    device = new_dyid()
    events = (add_to_cart("sku-1", 15.0), purchase([("sku-1", 15.0)]), login(email_for(owner)))
    await collect(api, section, device, *events)
    await _check(api, store, section, cid, 15.0)
