"""Error answers the Experience API's clients rely on (docs/api.md, dy-api.md §7):

- a body that is no JSON at all is 400 ("request parse error", it was FastAPI's 422) in the one
  error shape, saying where the decoder stopped, on every route taking a JSON body; a well-formed
  body's faults stay 422s naming the field;
- a batch with several invalid events reports every one, each field at fault with its own `loc`
  (only the first was reported), capped with a note counting the rest;
- the OpenAPI schema declares each operation's error answers with the error shape (only 2xx and
  422 were listed).
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlmodel import func, select

from api.errors import MAX_REPORTED_ERRORS
from store.engine import Store
from store.tables import Event
from tests.helpers import ADMIN, SectionKeys, add_to_cart, new_dyid

EVENT = "/v2/collect/user/event"
JSON = {"content-type": "application/json"}


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    """The answer's body, checked to be `status` in the one error shape with a single `body` item."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"detail", "error"} and len(body["detail"]) == 1, body
    assert set(body["detail"][0]) == {"type", "loc", "msg"} and body["detail"][0]["loc"] == ["body"], body
    return body


def _events_stored(store: Store, section_id: str) -> int:
    with store.session() as s:
        return int(s.exec(select(func.count()).select_from(Event).where(Event.section_id == section_id)).one())


# ------------------------------------------------------------------ 1. unparseable bodies are 400


async def test_malformed_truncated_or_foreign_json_is_400_saying_where(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A missing comma, a body cut short, XML sent as JSON, a body sent as text/plain: 400 naming the
    body, with the decoder's reason and position (never the text, which may hold a shopper's address)."""
    headers = {**section.ing, **JSON}
    good = '{"user": {"dyid": "1", "email": "jane@example.com"}, "events": [{"name": "x", "properties": {}}]}'
    r = await api.post(EVENT, content=good.replace(", \"events\"", ' "events"'), headers=headers)
    body = _error(r, 400)
    assert body["detail"][0]["type"] == "json_invalid"
    at = good.index('"events"') - 1  # where the missing comma was, after the space kept before "events"
    assert body["detail"][0]["msg"] == f"not valid JSON: Expecting ',' delimiter at line 1, column {at + 1} (char {at})"
    assert body["error"] == "body: " + body["detail"][0]["msg"] and "jane" not in r.text
    r = await api.post(EVENT, content=good[:60], headers=headers)
    assert _error(r, 400)["detail"][0]["msg"].startswith("not valid JSON: Unterminated string starting at line 1")
    r = await api.post(EVENT, content=good[:53], headers=headers)  # cut after a comma
    assert _error(r, 400)["detail"][0]["msg"].endswith("(char 53), where the body ends (truncated?)"), r.text
    r = await api.post(EVENT, content="<event><name>x</name></event>", headers=headers)
    assert _error(r, 400)["detail"][0]["msg"] == "not valid JSON: Expecting value at line 1, column 1 (char 0)"
    multi_line = '{\n  "user": {"dyid": "1"},\n  "events": [}\n'
    r = await api.post(EVENT, content=multi_line, headers=headers)
    assert _error(r, 400)["detail"][0]["msg"] == "not valid JSON: Expecting value at line 3, column 14 (char 40)"
    r = await api.post(EVENT, content=good, headers={**section.ing, "content-type": "text/plain"})
    assert _error(r, 400)["detail"][0]["msg"].startswith("the body was sent as text/plain; send JSON"), r.text
    assert _events_stored(store, section.id) == 0
    # A well-formed body's faults stay 422s naming the field.
    r = await api.post(EVENT, content='{"user": {"dyid": "1"}, "events": [{"properties": {}}]}', headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "events", 0, "name"], r.text


async def test_every_route_taking_a_json_body_answers_400_to_malformed_json(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """Each operation of the schema with a JSON request body, management, ingestion and admin alike."""
    schema = (await api.get("/openapi.json")).json()
    keys = {"dy-api-key": section.ingestion, "x-rejoin-key": section.management, **JSON}
    tried = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "application/json" not in operation.get("requestBody", {}).get("content", {}):
                continue
            url = path.replace("{", "").replace("}", "")  # any value: the body is read before the path's object
            auth = ADMIN if path == "/api/v1/sections" else {"authorization": f"Bearer {section.management}"}
            r = await api.request(method, url, content=b'{"name": "x",', headers={**keys, **auth})
            assert _error(r, 400)["detail"][0]["type"] == "json_invalid", (method, path, r.text)
            tried.append(f"{method} {path}")
    assert f"post {EVENT}" in tried and "post /api/v1/campaigns" in tried and len(tried) > 20, tried


# ------------------------------------------------------------------ 2. every invalid event of a batch


async def test_a_batch_reports_every_invalid_event_with_every_field(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """Events 1 and 3 of four are invalid (event 1 in two fields): all three faults are listed in
    order, each `loc` naming the event's index and field; nothing of the batch is stored."""
    no_sku = add_to_cart("sku-1")
    del no_sku["properties"]["productId"]
    no_sku["properties"]["value"] = -1
    lines = [{"productId": "a", "quantity": 1, "itemPrice": 5}, {"productId": "b", "quantity": "many", "itemPrice": 5}]
    bad_line = {"name": "Purchase", "properties": {"dyType": "purchase-v1", "value": 5, "cart": lines}}
    events = [add_to_cart("sku-ok"), no_sku, {"name": "Custom", "properties": {}}, bad_line]
    r = await api.post(EVENT, json={"user": {"dyid": new_dyid()}, "events": events}, headers=section.ing)
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["detail"]]
    assert locs == [
        ["body", "events", 1, "properties", "value"],
        ["body", "events", 1, "properties", "productId"],
        ["body", "events", 3, "properties", "cart", 1, "quantity"],
    ], r.text
    error = r.json()["error"]
    assert error.startswith("events.1.properties.value: ") and error.endswith("(and 2 more errors)"), error
    assert _events_stored(store, section.id) == 0


async def test_a_batch_full_of_faults_lists_the_first_fifty_and_counts_the_rest(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    """100 add-to-cart events without value, productId and quantity (300 faults), and 100 events without a
    name (pydantic's own 100 faults): 50 listed, then one item saying how many more there are."""
    broken = {"name": "Add", "properties": {"dyType": "add-to-cart-v1"}}
    r = await api.post(EVENT, json={"user": {"dyid": new_dyid()}, "events": [broken] * 100}, headers=section.ing)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert len(detail) == MAX_REPORTED_ERRORS + 1 == 51, len(detail)
    assert detail[-1] == {"type": "too_many_errors", "loc": ["body"], "msg": "250 more errors not listed"}
    assert detail[49]["loc"][:3] == ["body", "events", 16], detail[49]
    r = await api.post(EVENT, json={"user": {"dyid": new_dyid()}, "events": [{"properties": {}}] * 100},
                       headers=section.ing)  # fmt: skip
    detail = r.json()["detail"]
    assert r.status_code == 422 and len(detail) == 51 and detail[-1]["msg"] == "50 more errors not listed", r.text
    assert detail[0]["loc"] == ["body", "events", 0, "name"]


# ------------------------------------------------------------------ 4. error answers in the schema


async def test_the_schema_declares_each_operations_error_answers(api: httpx.AsyncClient) -> None:
    """With the error shape as their model: 429 everywhere, 401/403 where a key is read, 404 with a
    path parameter, 400/413/415/422 with a body; an operation's own declarations are kept."""
    schema = (await api.get("/openapi.json")).json()
    shape = schema["components"]["schemas"]["ErrorResponse"]
    assert shape["required"] == ["detail", "error"]
    assert schema["components"]["schemas"]["ErrorItem"]["required"] == ["type", "loc", "msg"]
    ops = schema["paths"]

    def declared(path: str, method: str) -> set[str]:
        return set(ops[path][method]["responses"])

    assert declared(EVENT, "post") == {"202", "400", "401", "403", "413", "415", "422", "429"}
    assert declared("/api/v1/campaigns/{campaign_id}", "get") == {"200", "401", "403", "404", "422", "429"}
    assert declared("/api/v1/campaigns/{campaign_id}", "put") >= {"400", "404", "413", "415"}
    assert "503" in declared("/api/v1/campaigns/{campaign_id}/journeys/exit", "post")
    assert declared("/healthz", "get") == {"200"}
    answer = ops[EVENT]["post"]["responses"]["429"]
    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "Retry-After" in answer["headers"]
    for path, operations in ops.items():
        for method, operation in operations.items():
            if path != "/healthz":
                assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)
