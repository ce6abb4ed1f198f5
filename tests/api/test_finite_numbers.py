"""Non-finite numbers (NaN, ±Infinity, `1e400`) are refused at every input and never break a report.

Python's json reads `1e400` as infinity and accepts the `NaN`/`Infinity` literals, so these
bodies are sent as raw text (httpx's `json=` would refuse to encode them).
"""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from temporalio.testing import WorkflowEnvironment

from api.limits import non_finite_path
from domain.feeds import parse_product, parse_user
from store.engine import Store
from store.report_tables import ReportAttribution
from store.tables import Event
from tests.audience.feed_helpers import create_feed, csv_bytes, feed_syncs, get_product, upload_feed
from tests.helpers import SectionKeys, collect, create_campaign, new_dyid, step
from tests.reports_world import World

JSON = {"content-type": "application/json"}
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _event_body(dyid: str, props: str) -> str:
    """An event request whose properties are given as raw JSON text (so they may hold 1e400)."""
    user = f'{{"dyid": "{dyid}", "active_consent_accepted": true}}'
    return f'{{"user": {user}, "events": [{{"name": "E", "properties": {props}}}]}}'


def _loc(r: httpx.Response) -> list[Any]:
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["type"] == "finite_number" and "finite" in detail["msg"], detail
    return list(detail["loc"])


def test_non_finite_path_finds_every_overflowing_form_and_only_those() -> None:
    """Each way JSON text can become a non-finite number is found, with its path; look-alikes are not."""
    cases: dict[str, list[str | int] | None] = {
        '{"a": 1e400}': ["a"],
        '{"a": [1, -1E+0400]}': ["a", 1],
        '{"a": NaN}': ["a"],
        '[{"b": {"c": -Infinity}}]': [0, "b", "c"],
        '{"a": ' + "1" + "0" * 310 + ".5}": ["a"],  # no exponent, 311 digits
        '{"a": ' + "1" * 290 + "e20}": ["a"],  # under 300 digits, a 2-digit exponent
        '{"a": ' + "1" + "0" * 400 + "}": ["a"],  # an integer beyond any float
        '{"a": 1.7976931348623157e308, "b": 1e-400, "c": -5e10, "d": 12}': None,
        '{"h": "5e12", "n": "NaN", "i": "Infinity 1e400"}': None,  # inside strings: text, not numbers
        "not json 1e400": None,  # FastAPI answers malformed JSON itself
    }
    for text, path in cases.items():
        assert non_finite_path(text.encode()) == path, text


async def test_event_value_and_item_price_beyond_float_range_are_422_naming_the_field(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Value or itemPrice 1e400, a NaN quantity, a custom event's -Infinity: 422 at that field, nothing stored."""
    dyid = new_dyid()
    url, headers = "/v2/collect/user/event", {**section.ing, **JSON}
    cart = '[{"productId": "sku-ok", "quantity": 1, "itemPrice": %s}]'
    value_inf = '{"dyType": "purchase-v1", "value": 1e400, "cart": ' + cart % "10" + "}"
    r = await api.post(url, content=_event_body(dyid, value_inf), headers=headers)
    assert _loc(r) == ["body", "events", 0, "properties", "value"]
    assert "events.0.properties.value" in r.json()["error"]
    price_inf = '{"dyType": "purchase-v1", "value": 10, "cart": ' + cart % "1e400" + "}"
    r = await api.post(url, content=_event_body(dyid, price_inf), headers=headers)
    assert _loc(r) == ["body", "events", 0, "properties", "cart", 0, "itemPrice"]
    add_nan = '{"dyType": "add-to-cart-v1", "value": 1, "productId": "p", "quantity": NaN}'
    r = await api.post(url, content=_event_body(dyid, add_nan), headers=headers)
    assert _loc(r) == ["body", "events", 0, "properties", "quantity"]
    custom = '{"score": {"weights": [1, -Infinity]}}'  # free-form properties of a custom event
    r = await api.post(url, content=_event_body(dyid, custom), headers=headers)
    assert _loc(r) == ["body", "events", 0, "properties", "score", "weights", 1]
    # FastAPI reads a body without a content type as JSON too: it is checked the same way.
    r = await api.post(url, content=_event_body(dyid, value_inf), headers=section.ing)
    assert _loc(r) == ["body", "events", 0, "properties", "value"]
    assert (await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)).status_code == 404

    # Finite but past any amount: sums and squares of such values in a report would overflow.
    huge = '{"dyType": "purchase-v1", "value": 1e300, "cart": ' + cart % "10" + "}"
    r = await api.post(url, content=_event_body(dyid, huge), headers=headers)
    assert r.status_code == 422, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["body", "events", 0, "properties", "value"] and "less than or equal to" in detail["msg"], detail

    lookalikes = '{"dyType": "purchase-v1", "value": 1e24, "note": "NaN 1e400", "cart": ' + cart % "5e-400" + "}"
    r = await api.post(url, content=_event_body(dyid, lookalikes), headers=headers)
    assert r.status_code == 202, r.text


async def test_product_price_and_attributes_beyond_float_range_are_422(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """`PUT /products` with price 1e400 or Infinity, or a NaN attribute, is 422 at that field and stores nothing."""
    url, headers = "/api/v1/products", {**section.mgmt, **JSON}
    r = await api.put(url, content='[{"sku": "fin-1", "price": 1e400}]', headers=headers)
    assert _loc(r) == ["body", 0, "price"]
    two = '[{"sku": "fin-1", "price": 5}, {"sku": "fin-2", "price": Infinity}]'
    r = await api.put(url, content=two, headers=headers)
    assert _loc(r) == ["body", 1, "price"]
    r = await api.put(url, content='[{"sku": "fin-1", "attributes": {"weight.kg": NaN}}]', headers=headers)
    assert _loc(r) == ["body", 0, "attributes", "weight.kg"]  # a key with a dot stays one part
    assert await get_product(api, section, "fin-1") == {}
    r = await api.put(url, content='[{"sku": "fin-1", "price": 1e300}]', headers=headers)
    assert r.status_code == 200, r.text
    assert (await get_product(api, section, "fin-1"))["price"] == 1e300


async def test_user_attributes_beyond_float_range_are_422(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Attributes of 1e400, a nested NaN or a 400-digit integer are 422 at that key; the user keeps its own."""
    dyid = new_dyid()
    await collect(api, section, dyid, {"name": "Visit", "properties": {}})
    url, headers = f"/api/v1/users/{dyid}/attributes", {**section.mgmt, **JSON}
    assert (await api.patch(url, json={"score": 7}, headers=section.mgmt)).status_code == 200
    assert _loc(await api.patch(url, content='{"score": 1e400}', headers=headers)) == ["body", "score"]
    r = await api.patch(url, content='{"ok": 1, "nested": {"a": [1, NaN]}}', headers=headers)
    assert _loc(r) == ["body", "nested", "a", 1]
    assert _loc(await api.patch(url, content='{"big": 1' + "0" * 400 + "}", headers=headers)) == ["body", "big"]
    r = await api.get(f"/api/v1/users/{dyid}", headers=section.mgmt)
    assert r.json()["attributes"] == {"score": 7}


def test_feed_rows_with_non_finite_numbers_are_rejected_with_a_reason() -> None:
    """A feed price of inf/nan/1e400 or an attribute of 1e400 rejects the row; nan/inf as words stay text."""
    header = ["sku", "price", "points"]
    for price in ("inf", "nan", "-Infinity", "1e400"):
        reason = parse_product(header, ["s1", price, ""])
        assert reason == f"price '{price}' is not a finite number", reason
    assert parse_product(header, ["s1", "10", "1e400"]) == "points '1e400' is too large for a number"
    assert parse_user(["cuid", "points"], ["c1", "-1E999"]) == "points '-1E999' is too large for a number"
    assert parse_user(["cuid", "nickname", "points"], ["c1", "Nan", "12"]) == {
        "cuid": "c1", "attributes": {"nickname": "Nan", "points": 12}}  # fmt: skip


async def test_product_feed_reports_rows_with_non_finite_prices(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, s3: str
) -> None:
    """Through a real sync: the inf, nan and 1e400 rows are listed as rejected lines; the good row applies."""
    feed = await create_feed(api, section)
    content = csv_bytes("sku,price,points", "f-1,10,3", "f-2,inf,3", "f-3,nan,3", "f-4,5,1e400")
    summary = await upload_feed(api, env.client, section, feed, content)
    assert summary.state == "succeeded", summary
    sync = (await feed_syncs(api, section, feed))[0]
    assert (sync["rows_accepted"], sync["rows_rejected"]) == (1, 3), sync
    reasons = {r["line"]: r["reason"] for r in sync["rejections"]}
    assert reasons == {3: "price 'inf' is not a finite number", 4: "price 'nan' is not a finite number",
                       5: "points '1e400' is too large for a number"}  # fmt: skip
    assert (await get_product(api, section, "f-1"))["price"] == 10
    assert await get_product(api, section, "f-2") == {}


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
async def test_report_survives_a_stored_non_finite_revenue(
    api: httpx.AsyncClient, store: Store, section: SectionKeys, bad: float
) -> None:
    """A purchase value stored as ±inf or NaN (older versions) counts as a purchase worth 0, in JSON, CSV and HTML.

    Both ways a report reads attributions are covered: the counters (whole hours) and the raw tables.
    """
    if math.isnan(bad) and store.engine.dialect.name == "sqlite":
        pytest.skip("SQLite stores NaN as NULL (and the attribution's value is NOT NULL)")
    spec = {"name": "Finite report", "type": "cart_abandonment", "channel_priority": ["email"],
            "settings": {"primary_metric": "revenue", "attribution_window": "P1D"},
            "variations": [{"id": "a", "name": "A", "share": 50, "steps": [step("S1")]},
                           {"id": "b", "name": "B", "share": 50, "steps": [step("S1")]}]}  # fmt: skip
    cid = await create_campaign(api, section, spec, activate=False)
    w = World(store, section.id, cid)

    def h(hours: float) -> datetime:
        return T0 + timedelta(hours=hours)

    buyer = w.user("a", h(1))
    w.send(buyer, "a", 0, "email", h(2)); w.hit(buyer, "a", "click", h(3))  # noqa: E702
    w.event(buyer, "purchase", h(4), 50.0, tx="T1")
    broken = w.event(buyer, "purchase", h(5), 20.0, tx="T2")
    with store.session() as s:  # as an older version stored it: both the event and its attribution
        s.execute(update(Event).where(Event.id == broken).values(value=bad))  # type: ignore[arg-type]
        attribution = update(ReportAttribution).where(ReportAttribution.event_id == broken)  # type: ignore[arg-type]
        s.execute(attribution.values(value=bad))
    report = f"/api/v1/campaigns/{cid}/report"
    # Whole hours come from the counters; a range inside one hour is computed from the raw tables.
    for start, end in ((T0, h(48)), (h(0.5), h(1.5))):
        params = {"from": start.isoformat(), "to": end.isoformat()}
        r = await api.get(report, headers=section.mgmt, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        a = {v["id"]: v for v in body["variations"]}["a"]
        assert a["metrics"]["purchases"]["count"] == 2 and a["metrics"]["revenue"]["count"] == 50, (params, a)
        assert body["series"]["revenue_by_day"] == {"2026-03-01": 50.0}, params
        r = await api.get(report, headers=section.mgmt, params={**params, "format": "csv"})
        assert r.status_code == 200, r.text
        table = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
        row_a = next(x for x in table if x["section"] == "variation" and x["variation"] == "a")
        assert row_a["revenue"] == "50" and "inf" not in r.text and "nan" not in r.text, r.text
        r = await api.get(f"{report}.html", headers=section.mgmt, params=params)
        assert r.status_code == 200 and "50.00" in r.text, r.text
