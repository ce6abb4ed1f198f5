"""Every fault of a batch in one answer, and every error answer in the one shape (docs/api.md):

- an event batch lists the faults of every event, structural (no `name`, `properties` no object,
  caught before the route) and of its schema alike: a structural fault hid all the others;
- every non-finite number is listed (only the first was), merged with the batch's other faults;
- every 4xx body has `error` beside `detail` (FastAPI's validation errors had no `error`);
- an empty body (or a gzip body of 0 bytes) is a 400 saying so, not a 422 `missing`.
"""

from __future__ import annotations

import gzip
from typing import Any

import httpx

from store.engine import Store
from tests.api.test_request_errors import _events_stored
from tests.helpers import SectionKeys, add_to_cart, new_dyid

EVENT = "/v2/collect/user/event"
PAGEVIEW = "/v2/collect/user/pageview"
JSON = {"content-type": "application/json"}


def _locs(r: httpx.Response) -> list[list[Any]]:
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"detail", "error"}, body
    return [d["loc"] for d in body["detail"]]


def _faulty_batch() -> list[dict[str, Any]]:
    """Events 1, 3, 4 and 5 of six are invalid; 4 and 5 structurally (FastAPI's faults)."""
    bad_add = {"name": "Add", "properties": {"dyType": "add-to-cart-v1", "value": "abc", "productId": "p",
                                             "quantity": -1, "cart": [{"quantity": "x"}]}}  # fmt: skip
    bad_purchase = {"name": "Buy", "properties": {"dyType": "purchase-v1", "value": 5, "cart": "notalist"}}
    nameless_login = {"properties": {"dyType": "login-v1"}}
    return [add_to_cart("ok"), bad_add, add_to_cart("ok"), bad_purchase, nameless_login,
            {"name": "Custom", "properties": "not an object"}]  # fmt: skip


async def test_structural_and_schema_faults_of_every_event_in_one_answer(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A nameless event no longer hides the schema faults of the others (only `events.4.name` was
    listed): each event's faults in order, its own envelope's first; nothing stored."""
    r = await api.post(EVENT, json={"user": {"dyid": new_dyid()}, "events": _faulty_batch()}, headers=section.ing)
    locs = _locs(r)
    e = ["body", "events"]
    assert locs == [
        [*e, 1, "properties", "value"], [*e, 1, "properties", "cart", 0, "productId"],
        [*e, 1, "properties", "cart", 0, "quantity"], [*e, 1, "properties", "quantity"],
        [*e, 3, "properties", "cart"],
        [*e, 4, "name"], [*e, 4, "properties", "cuid"],
        [*e, 5, "properties"],
    ], r.text  # fmt: skip
    detail = r.json()["detail"]
    assert detail[5]["type"] == "missing" and detail[7]["type"] == "dict_type", detail
    assert r.json()["error"] == f"events.1.properties.value: {detail[0]['msg']} (and 7 more errors)"
    assert _events_stored(store, section.id) == 0
    # The envelope's own faults (no user) come first, the events' still listed.
    r = await api.post(EVENT, json={"events": _faulty_batch()}, headers=section.ing)
    locs = _locs(r)
    assert locs[0] == ["body", "user"] and len(locs) == 9, locs
    assert all(loc[1] == "events" for loc in locs[1:]), locs
    # A valid batch still goes through, normalised as before.
    good = {"user": {"dyid": new_dyid()}, "events": [add_to_cart("a"), {"name": "Custom", "properties": {}}]}
    r = await api.post(EVENT, json=good, headers=section.ing)
    assert r.status_code == 202 and r.json()["accepted"] == 2, r.text


async def test_every_non_finite_number_is_listed_with_the_batchs_other_faults(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Three non-finite numbers in two events and a nameless third event: all four faults, in the
    events' order (only the first number was reported, and nothing else). Another route lists every
    non-finite number too."""
    events = ('[{"name": "Buy", "properties": {"dyType": "purchase-v1", "value": 1e400, "cart": []}},'
              ' {"name": "C", "properties": {"a": NaN, "b": [1, -Infinity]}},'
              ' {"properties": {}}]')  # fmt: skip
    body = '{"user": {"dyid": "%s"}, "events": %s}' % (new_dyid(), events)
    r = await api.post(EVENT, content=body, headers={**section.ing, **JSON})
    assert _locs(r) == [
        ["body", "events", 0, "properties", "value"], ["body", "events", 1, "properties", "a"],
        ["body", "events", 1, "properties", "b", 1], ["body", "events", 2, "name"],
    ], r.text  # fmt: skip
    assert [d["type"] for d in r.json()["detail"]] == ["finite_number"] * 3 + ["missing"]
    assert r.json()["error"] == "events.0.properties.value: Input should be a finite number (and 3 more errors)"
    # Finite otherwise: the numbers alone, still 422.
    body = '{"user": {"dyid": "%s"}, "events": [{"name": "C", "properties": {"a": NaN}}]}' % new_dyid()
    r = await api.post(EVENT, content=body, headers={**section.ing, **JSON})
    assert _locs(r) == [["body", "events", 0, "properties", "a"]]
    # Another route: the request limits answer, listing each number.
    view = '{"user": {"dyid": "1", "x": 1e400, "y": [NaN]}, "context": {"page": {"type": "HOMEPAGE", "z": Infinity}}}'
    r = await api.post(PAGEVIEW, content=view, headers={**section.ing, **JSON})
    assert _locs(r) == [["body", "user", "x"], ["body", "user", "y", 0], ["body", "context", "page", "z"]], r.text
    many = '{"user": {"dyid": "1", "x": [%s]}, "context": {"page": {"type": "HOMEPAGE"}}}' % ", ".join(["NaN"] * 60)
    r = await api.post(PAGEVIEW, content=many, headers={**section.ing, **JSON})
    assert len(_locs(r)) == 51 and r.json()["detail"][-1]["msg"] == "10 more errors not listed", r.text


async def test_every_error_answer_has_detail_and_error(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """FastAPI's validation errors (body, query), route-raised ones, the router's and the request
    limits': each body is `{"detail": [...], "error": "<one line>"}`."""
    bearer = {"authorization": f"Bearer {section.management}"}
    big = b'{"a": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    requests: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", EVENT, {"json": {"user": {"dyid": "1"}, "events": [{"properties": {}}]}}, 422),  # no name
        ("POST", PAGEVIEW, {"json": {"user": {"dyid": "1"}}}, 422),  # FastAPI's own: no context
        ("GET", "/api/v1/campaigns/x/report?tz=Bad", {}, 422),  # a query parameter
        ("POST", PAGEVIEW, {"json": {"user": {"dyid": "1"}, "context": {"page": {"type": "PRODUCT"}}}}, 422),
        ("POST", "/v2/userdata/channels/pigeon/opt-in", {"json": {"identifier": {"type": "email", "value": "a@b.c"}}},
         422),  # route-raised Unprocessable
        ("POST", EVENT, {"content": b""}, 400),
        ("POST", EVENT, {"content": b"[1, 2"}, 400),
        ("POST", EVENT, {"content": big}, 413),
        ("POST", EVENT, {"content": b"{}", "headers": {"content-encoding": "br"}}, 415),
        ("POST", EVENT, {"content": b'{"user": {"dyid": "\\u0000"}}'}, 422),
        ("GET", "/api/v1/nowhere", {}, 404),
        ("DELETE", EVENT, {}, 405),
    ]
    for method, url, kwargs, status in requests:
        headers = {**section.ing, **bearer, **JSON, **kwargs.pop("headers", {})}
        r = await api.request(method, url, headers=headers, **kwargs)
        assert r.status_code == status, (method, url, r.text)
        body = r.json()
        assert set(body) == {"detail", "error"} and body["detail"], (url, body)
        assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"], (url, body)
    r = await api.post(EVENT, json={"user": {"dyid": "1"}, "events": []})  # no key
    assert r.status_code == 401 and set(r.json()) == {"detail", "error"}, r.text


async def test_an_empty_body_is_400_saying_so(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Empty, with or without a JSON content type, or gzip of nothing: 400 `empty body` at `body`
    (it was 422 `missing`); a JSON `null` is still a 422; a route taking no body is unaffected."""
    empty_gzip = {"content-encoding": "gzip", **JSON}
    for headers in (JSON, {}, empty_gzip):
        r = await api.post(EVENT, content=b"", headers={**section.ing, **headers})
        assert r.status_code == 400, (headers, r.text)
        item = {"type": "json_invalid", "loc": ["body"], "msg": "empty body: send a JSON object"}
        assert r.json() == {"detail": [item], "error": "body: empty body: send a JSON object"}, r.text
    r = await api.post("/api/v1/campaigns", content=b"", headers={**section.mgmt, **JSON})
    assert r.status_code == 400 and r.json()["detail"][0]["msg"] == "empty body: send a JSON object", r.text
    r = await api.post(EVENT, content=b"null", headers={**section.ing, **JSON})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"], r.text
    r = await api.post(EVENT, content=gzip.compress(b""), headers={**section.ing, **empty_gzip})
    assert r.status_code == 400 and "empty body" in r.json()["error"], r.text
