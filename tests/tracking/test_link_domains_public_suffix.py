"""A section's `link_domains` may not be a public suffix (`com`, `co.uk`, `github.io`) nor an IP:
unsigned legacy `tremclk` links follow any host under a listed domain, so `com` made them an open
redirect to every .com site (a security trial's finding). Refused with a 422 naming the field; a
public suffix stored before the check allows no redirect."""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
import pytest

from domain.tracking import host_allowed, link_domain_problem
from store import section_links
from store.engine import Store
from tests.helpers import ADMIN, SectionKeys
from tests.tracking.test_dead_links import is_neutral, set_links
from tests.tracking.test_tracking_api import HUMAN


@pytest.mark.parametrize("domain", ["com", "COM.", "co.uk", "github.io", "127.0.0.1", "10.0.0.1", "1.2.3", "example"])
async def test_public_suffixes_and_ip_literals_are_refused(
    api: httpx.AsyncClient, section: SectionKeys, domain: str
) -> None:
    r = await set_links(api, section, link_domains=["shop.example", domain])
    assert r.status_code == 422, r.text
    assert "link_domains" in r.json()["detail"][0]["loc"], r.text
    r = await api.post("/api/v1/sections", headers=ADMIN, json={"name": "x", "link_domains": [domain]})
    assert r.status_code == 422 and "link_domains" in r.json()["detail"][0]["loc"], r.text
    r = await api.get("/api/v1/section", headers=section.mgmt)
    assert domain.lower().rstrip(".") not in r.json()["link_domains"]


async def test_registrable_domains_and_their_subdomains_are_accepted(
    api: httpx.AsyncClient, section: SectionKeys
) -> None:
    domains = ["shop.example", "shop.co.uk", "me.github.io", "www.shop.com"]
    r = await set_links(api, section, link_domains=domains)
    assert r.status_code == 200 and r.json()["link_domains"] == domains, r.text


async def test_a_public_suffix_stored_before_the_check_redirects_nowhere(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    legacy = f"ps{time.time_ns()}"
    with store.session() as s:  # as a section configured before link_domains were checked
        section_links.save(s, section.id, section_links.LinkSettings(None, ["com", "127.0.0.1"], legacy))
        s.commit()
    for target in ("https://evil.com/phish", "http://127.0.0.1/x"):
        r = await api.get(f"/tremclk?sec={legacy}&targetUrl={quote(target, safe='')}", headers=HUMAN)
        assert is_neutral(r), (target, r.status_code, r.headers.get("location"))


def test_host_allowed_ignores_public_suffix_entries() -> None:
    assert not host_allowed("https://evil.com/phish", ["com"])
    assert not host_allowed("https://evil.co.uk/", ["co.uk"])
    assert host_allowed("https://www.shop.co.uk/cart", ["com", "shop.co.uk"])
    assert link_domain_problem("shop.example") is None


@pytest.mark.parametrize("domain", ["0x7f000001", "1e100", "example", "localhost"])
def test_a_single_label_is_refused_as_no_registrable_name_not_as_a_public_suffix(domain: str) -> None:
    """A re-probe trial's finding: `0x7f000001` was refused as "a public suffix", which it is not."""
    problem = link_domain_problem(domain)
    assert problem is not None and "not a registrable domain name" in problem, problem
    assert "public suffix" not in problem
    assert "public suffix" in (link_domain_problem("co.uk") or "")
