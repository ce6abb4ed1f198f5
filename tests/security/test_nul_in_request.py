"""A NUL character (`%00`) in a request's path or query never reaches the database.

PostgreSQL text cannot hold NUL: before, such a path or query parameter made the route's query fail and
the request a 500 (a traceback logged each time), also without a key (`/s/<ten NULs>`). Now refused
before any route runs (`api/nul_guard.py`): 404 for the path, 422 naming the query parameter; a
recipient's link drops the parameter instead and still goes to its target. Run it on PostgreSQL
(REJOIN_TEST_DB=postgres) to see the 500s it guards against."""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import SectionKeys, cart_campaign, create_campaign
from tests.tracking.test_dead_links import set_links
from tests.tracking.test_legacy_links import tremclk
from tests.tracking.test_tracking_api import HUMAN


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/campaigns/cmp_%00"),
        ("GET", "/api/v1/users/%00"),
        ("GET", "/api/v1/users/a%00/journeys"),
        ("GET", "/api/v1/products/%00"),
        ("GET", "/api/v1/templates/%00"),
        ("GET", "/api/v1/integrations/%00"),
        ("GET", "/api/v1/journeys/%00"),
        ("GET", "/api/v1/runs/%00"),
        ("GET", "/api/v1/feeds/%00"),
        ("DELETE", "/api/v1/keys/%00"),
        ("DELETE", "/api/v1/users/%00"),
    ],
)
async def test_nul_in_a_path_is_a_404_before_any_route_runs(
    api: httpx.AsyncClient, section: SectionKeys, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        r = await api.request(method, path, headers=section.mgmt)
    assert r.status_code == 404, r.text
    assert r.json()["detail"][0]["type"] == "not_found" and "NUL" in r.json()["error"], r.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/v1/outbox?channel=%00", "channel"),
        ("/api/v1/outbox?limit=5&channel=email%00x", "channel"),
        ("/api/v1/outbox?a%00b=1", "a\\u0000b"),  # the name itself: named, the NUL written out
        ("/api/v1/campaigns?status=%00", "status"),
    ],
)
async def test_nul_in_a_query_parameter_is_a_422_naming_it(
    api: httpx.AsyncClient, section: SectionKeys, path: str, name: str
) -> None:
    r = await api.get(path, headers=section.mgmt)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", name] and "NUL" in r.json()["error"], r.text


async def test_nul_short_link_codes_without_a_key_never_reach_the_database(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Codes of 6 to 32 characters are looked up; ten NULs was a 500 with a traceback, for anyone."""
    with caplog.at_level(logging.ERROR):
        for code in ("%00" * 10, "abc%00def", "%00" * 32):
            r = await api.get(f"/s/{code}", headers=HUMAN)
            assert r.status_code == 404, (code, r.status_code, r.text)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_a_legacy_click_with_a_nul_cuid_still_goes_to_its_target(
    api: httpx.AsyncClient, section: SectionKeys, caplog: pytest.LogCaptureFixture
) -> None:
    """The recipient's link works as if `cuid` was not given: redirected to the allowed target, no
    error logged (before: the look-up failed on PostgreSQL and the customer got the "link expired" page)."""
    cid = await create_campaign(api, section, cart_campaign())
    legacy = f"88{time.time_ns()}"
    assert (await set_links(api, section, link_domains=["shop.example"], legacy_section_id=legacy)).status_code == 200
    target = "https://shop.example/"
    with caplog.at_level(logging.ERROR):
        for sec in (section.id, legacy):
            r = await api.get(f"/tremclk/?sec={sec}&expId={cid}&cuid=%00&targetUrl={quote(target, safe='')}")
            assert r.status_code == 302 and r.headers["location"] == target, (r.status_code, r.text)
            r = await api.get(tremclk(sec, cid, "a\x00b@example.com", target), headers=HUMAN)
            assert r.status_code == 302 and r.headers["location"] == target, (r.status_code, r.text)
            r = await api.get(f"/tremop/?sec={sec}&expId={cid}&cuid=%00", headers=HUMAN)
            assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
