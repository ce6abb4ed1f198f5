"""Every 422 locates its fault the one way FastAPI does: `loc` starts with where the input came from
("body", "query", "path", "header") and list indexes are numbers.

Before, the faults a route found itself (an `Unprocessable` naming a dotted field) said
`["variations", "0", "steps", ...]` or `["feed_id"]`: no source, indexes as strings, while pydantic's
own faults on the same request said `["body", "variations", 0, ...]`. A client had to handle both.
"""

from __future__ import annotations

from typing import Any

import httpx

from api.errors import SOURCES
from tests.helpers import SectionKeys, add_to_cart, cart_campaign, new_dyid, step


def _assert_shape(r: httpx.Response, loc: list[str | int]) -> None:
    """A 422 in the one shape, its first fault at `loc`, the `error` line naming the same field."""
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"detail", "error"}, body
    for item in body["detail"]:
        assert set(item) == {"type", "loc", "msg"} and item["msg"], item
        assert item["loc"] and item["loc"][0] in SOURCES, item
        assert not any(isinstance(part, str) and part.isdigit() for part in item["loc"]), item
    assert body["detail"][0]["loc"] == loc, body
    # `error` names the field as the routes' messages do: a body field without `body.`, a parameter with its source.
    place = ".".join(str(p) for p in (loc[1:] if loc[0] == "body" else loc))
    assert body["error"].startswith(f"{place}: "), body


def _templated_campaign(template_id: str) -> dict[str, Any]:
    first = step("Reminder")
    first["messages"] = {"email": {"template_id": template_id}}
    return cart_campaign(steps=[first])


async def test_every_422_starts_loc_with_its_source_and_indexes_as_numbers(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    mgmt = section.mgmt
    # pydantic's fault in a body field
    r = await api.post("/api/v1/campaigns", json=cart_campaign(wait="soon"), headers=mgmt)
    _assert_shape(r, ["body", "trigger", "wait"])
    # a fault the route finds itself, in a list (was ["variations", "0", "steps", "0", ...])
    r = await api.post("/api/v1/campaigns", json=_templated_campaign("tpl-none"), headers=mgmt)
    _assert_shape(r, ["body", "variations", 0, "steps", 0, "messages", "email", "template_id"])
    # a fault the route finds in a path parameter (was ["feed_id"])
    feed = {"kind": "product", "name": "Uploaded", "source": "upload"}
    created = await api.post("/api/v1/feeds", json=feed, headers=mgmt)
    assert created.status_code == 201, created.text
    r = await api.post(f"/api/v1/feeds/{created.json()['id']}/sync", headers=mgmt)
    _assert_shape(r, ["path", "feed_id"])
    # pydantic's fault in a query parameter
    r = await api.get("/api/v1/outbox", params={"after_id": -1}, headers=mgmt)
    _assert_shape(r, ["query", "after_id"])
    # a fault of one event in a batch
    events = [add_to_cart("sku-1"), {"properties": {"dyType": "add-to-cart-v1"}}]
    body = {"user": {"dyid": new_dyid(), "active_consent_accepted": True}, "events": events}
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    _assert_shape(r, ["body", "events", 1, "name"])


async def test_a_400_and_a_404_locate_their_fault_too(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """Not 422s: an unreadable body is at `["body"]`, an unknown object names its path parameter with
    its source (was `["feed_id"]`)."""
    r = await api.post("/api/v1/campaigns", content=b"{", headers={**section.mgmt, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["body"], r.text
    r = await api.post("/api/v1/feeds/nope/sync", headers=section.mgmt)
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "feed_id"], r.text
