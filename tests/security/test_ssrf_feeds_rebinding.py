"""A URL feed's fetch goes to the address the SSRF guard checked (no DNS rebinding), every redirect
hop checked and pinned; an internal feed URL is refused on save.

The guard resolved the feed's host, then the HTTP client resolved it again and connected wherever the
second answer said: a name answering a public address once and 127.0.0.1 after fetched the loopback
server. Here `getaddrinfo` is scripted per host name, and connections to the "public" addresses are
either refused (recorded) or handed to the local test server standing in for a public one.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.feeds import FeedActivities
from api.main import create_app
from settings import Settings
from store.engine import Store
from store.feed_tables import Feed
from tests.audience.feed_helpers import create_feed, csv_bytes
from tests.helpers import SectionKeys, make_section
from tests.provider_server import ProviderServer, Reply
from workflows.feed_models import FeedBeginRequest, FeedStageRequest, FeedStageResult

PUBLIC = "93.184.216.34"
OTHER_PUBLIC = "93.184.216.35"
FILE = csv_bytes("sku,price", "sku-a,1", "sku-b,2")


class Network:
    """Scripted DNS (answers per name, the last one repeated) and connections to public addresses."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]], serve: int | None) -> None:
        self.answers, self.serve = answers, serve  # serve: hand public addresses to this local port
        self.lookups: list[str] = []
        self.connections: list[tuple[str, int]] = []
        real_lookup, real_connect = socket.getaddrinfo, socket.create_connection

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name in self.answers:
                self.lookups.append(name)
                queue = self.answers[name]
                address = queue.pop(0) if len(queue) > 1 else queue[0]
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]
            return real_lookup(host, port, *args, **kwargs)

        def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
            host, port = address
            if host in (PUBLIC, OTHER_PUBLIC):
                self.connections.append((host, port))
                if self.serve is None:
                    raise ConnectionRefusedError(f"{host}:{port} (test: no internet)")
                return real_connect(("127.0.0.1", self.serve), *args, **kwargs)
            return real_connect(address, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", create_connection)


def _begin(store: Store, settings: Settings, feed: str) -> tuple[FeedActivities, FeedStageRequest]:
    acts = FeedActivities(store, settings.model_copy(update={"allow_private_urls": False}))
    sync_id = "fsync_" + secrets.token_hex(6)
    ActivityEnvironment().run(acts.begin, FeedBeginRequest(sync_id=sync_id, feed_id=feed, as_of=datetime.now(UTC)))
    return acts, FeedStageRequest(sync_id=sync_id, feed_id=feed, max_rejected_rows=10)


def _stage(acts: FeedActivities, req: FeedStageRequest) -> FeedStageResult:
    result: FeedStageResult = ActivityEnvironment().run(acts.stage, req)
    return result


def _raises(run: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as failed:
        run()
    return failed.value


async def test_a_rebinding_name_cannot_move_the_feed_fetch_to_loopback(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """rebind.test answers a public address to the guard and 127.0.0.1 afterwards: the GET goes to the
    public address the guard checked (refused here: no internet), never to the loopback server."""
    path = f"/feed-{secrets.token_hex(3)}.csv"
    fresh_provider.default(path, Reply(200, FILE.decode()))
    feed = await create_feed(api, section, source="url", url=f"http://rebind.test:{fresh_provider.port}{path}")
    acts, req = _begin(store, settings, feed)
    net = Network(monkeypatch, {"rebind.test": [PUBLIC, "127.0.0.1"]}, serve=None)
    error = _raises(lambda: _stage(acts, req))
    assert fresh_provider.to(path) == [], "the loopback server was fetched after the check"
    assert net.connections == [(PUBLIC, fresh_provider.port)] and net.lookups == ["rebind.test"], error


async def test_the_pinned_fetch_keeps_the_host_name_and_reads_the_file(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A public feed host: one lookup, the connection to its address, the name in the Host header."""
    path = f"/feed-{secrets.token_hex(3)}.csv"
    fresh_provider.default(path, Reply(200, FILE.decode()))
    feed = await create_feed(api, section, source="url", url=f"http://shop.test:{fresh_provider.port}{path}")
    acts, req = _begin(store, settings, feed)
    net = Network(monkeypatch, {"shop.test": [PUBLIC, "127.0.0.1"]}, serve=fresh_provider.port)
    result = _stage(acts, req)
    assert (result.state, result.rows_accepted) == ("staged", 2), result
    assert [r.headers["host"] for r in fresh_provider.to(path)] == [f"shop.test:{fresh_provider.port}"]
    assert net.connections == [(PUBLIC, fresh_provider.port)] and net.lookups == ["shop.test"]


async def test_a_redirect_to_an_internal_address_is_refused_before_connecting(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The public feed server redirects to 127.0.0.1: the hop is checked like the first one, so the
    sync fails at once (NoSource, not retried) naming the address, and the internal URL is not fetched."""
    path, secret = f"/feed-{secrets.token_hex(3)}.csv", f"/secret-{secrets.token_hex(3)}"
    fresh_provider.default(secret, Reply(200, FILE.decode()))
    inside = f"http://127.0.0.1:{fresh_provider.port}{secret}"
    fresh_provider.default(path, Reply(302, "", headers={"Location": inside}))
    feed = await create_feed(api, section, source="url", url=f"http://shop.test:{fresh_provider.port}{path}")
    acts, req = _begin(store, settings, feed)
    Network(monkeypatch, {"shop.test": [PUBLIC]}, serve=fresh_provider.port)
    error = _raises(lambda: _stage(acts, req))
    assert isinstance(error, ApplicationError), error
    assert error.type == "NoSource" and error.non_retryable and "127.0.0.1" in str(error), error
    assert len(fresh_provider.to(path)) == 1 and fresh_provider.to(secret) == []


async def test_a_redirect_to_another_public_host_is_followed_checked_and_pinned(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, settings: Settings,
    fresh_provider: ProviderServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A CDN redirect (301) is followed; the next host is resolved once by the guard and the GET goes to
    that address, even though the name answers 127.0.0.1 on a later lookup."""
    path, real = f"/feed-{secrets.token_hex(3)}.csv", f"/real-{secrets.token_hex(3)}.csv"
    fresh_provider.default(real, Reply(200, FILE.decode()))
    fresh_provider.default(path, Reply(301, "", headers={"Location": f"http://cdn.test:{fresh_provider.port}{real}"}))
    feed = await create_feed(api, section, source="url", url=f"http://shop.test:{fresh_provider.port}{path}")
    acts, req = _begin(store, settings, feed)
    answers = {"shop.test": [PUBLIC], "cdn.test": [OTHER_PUBLIC, "127.0.0.1"]}
    net = Network(monkeypatch, answers, serve=fresh_provider.port)
    result = _stage(acts, req)
    assert (result.state, result.rows_accepted) == ("staged", 2), result
    assert [r.headers["host"] for r in fresh_provider.to(real)] == [f"cdn.test:{fresh_provider.port}"]
    assert net.connections == [(PUBLIC, fresh_provider.port), (OTHER_PUBLIC, fresh_provider.port)]
    assert net.lookups == ["shop.test", "cdn.test"]


# ------------------------------------------------------------------ on save


@pytest.fixture
async def strict_api(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """The API without REJOIN_ALLOW_PRIVATE_URLS (as in production)."""
    strict = settings.model_copy(update={"allow_private_urls": False})
    app = create_app(strict, store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as api:
        yield api


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/healthz",
        "http://2130706433:8000/healthz",  # 127.0.0.1 as one number
        "http://0:8000/healthz",  # 0.0.0.0
        "http://[::ffff:127.0.0.1]:8000/healthz",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8000/feed.csv",
        "http://user:pw@93.184.216.34/feed.csv",  # credentials (and an easily misread host)
    ],
)
async def test_an_internal_feed_url_is_refused_on_save(strict_api: httpx.AsyncClient, store: Store, url: str) -> None:
    """As integrations' URLs are: a 422 naming `url`, nothing saved."""
    sec = await make_section(strict_api, "strict-feeds")
    r = await strict_api.post(
        "/api/v1/feeds", json={"kind": "product", "name": "F", "source": "url", "url": url}, headers=sec.mgmt
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "url"], r.text
    with store.session() as s:
        assert s.exec(select(Feed).where(Feed.section_id == sec.id)).all() == []


async def test_public_or_unresolvable_feed_urls_are_saved(strict_api: httpx.AsyncClient) -> None:
    """A public address is saved; a name that does not resolve now is left to the sync (as integrations)."""
    sec = await make_section(strict_api, "strict-feeds-ok")
    for url in ("http://93.184.216.34/feed.csv", "https://feeds.shop.invalid/catalog.csv"):
        r = await strict_api.post(
            "/api/v1/feeds", json={"kind": "product", "name": "F", "source": "url", "url": url}, headers=sec.mgmt
        )
        assert r.status_code == 201, r.text
