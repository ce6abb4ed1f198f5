"""A Web Push subscription is one opt-in however its JSON is written: it is keyed by its endpoint.

The browser's `JSON.stringify(subscription)`, a shop backend's `json.dumps` of it (other key order,
spaces, no `expirationTime`), PHP's escaped slashes: all name the same subscription. An opt-out
written one way withdraws an opt-in written another (consent), a re-subscription is the same
row (one message per device), and new keys under the same endpoint replace the old ones (sends
use the newest). Rows stored before this (keyed by the raw JSON's hash) are moved on when met.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import http_ece  # type: ignore[import-untyped]
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import col, delete, select, update
from temporalio.testing import WorkflowEnvironment

from providers.webpush import b64url
from settings import Settings
from store.engine import Store
from store.tables import OptIn, UserIdentifier
from tests.helpers import (
    SectionKeys,
    app_state,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_result,
    new_dyid,
    step,
)
from tests.provider_server import ProviderServer, Received, Reply
from tests.providers.keys import ec_key, pem


class Browser:
    """A push subscriber (PushManager.subscribe()): an endpoint, a P-256 key pair, an auth secret."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.rotate()

    def rotate(self) -> None:
        """New keys under the same endpoint (a browser re-subscribing after its keys changed)."""
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    def subscription(self) -> dict[str, Any]:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        keys = {"p256dh": b64url(public), "auth": b64url(self.auth)}
        return {"endpoint": self.endpoint, "expirationTime": None, "keys": keys}

    def as_browser_sends_it(self) -> str:
        """`JSON.stringify(subscription)`: compact, endpoint first, `expirationTime: null`."""
        return json.dumps(self.subscription(), separators=(",", ":"))

    def as_backend_sends_it(self) -> str:
        """A shop backend's re-serialisation: sorted keys, spaces, `expirationTime` dropped."""
        sub = {k: v for k, v in self.subscription().items() if k != "expirationTime"}
        return json.dumps(sub, sort_keys=True, indent=1)

    def as_php_sends_it(self) -> str:
        """PHP's json_encode: slashes escaped."""
        return json.dumps(self.subscription()).replace("/", "\\/")

    def decrypt(self, body: bytes) -> Any:
        return json.loads(http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"))


def _optin(token: str, optout: bool = False) -> dict[str, Any]:
    dy_type = "message-optout-v1" if optout else "message-optin-v1"
    return {"name": "Push opt", "properties": {"dyType": dy_type, "channelType": "WEB_PUSH", "pushID": token}}


async def _api_opt(api: httpx.AsyncClient, sec: SectionKeys, action: str, value: str) -> None:
    body = {"identifier": {"type": "custom", "value": value}}
    r = await api.post(f"/v2/userdata/channels/web_push/{action}", json=body, headers=sec.ing)
    assert r.status_code == 200, r.text


async def _web_push_campaign(api: httpx.AsyncClient, sec: SectionKeys) -> str:
    config = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    await add_integration(api, sec, "web_push", kind="webpush", identifier_type="custom", config=config)
    spec = cart_campaign(wait="PT1H", channel_priority=["web_push"],
                         steps=[step("Nudge", channels=("web_push",), payload={"title": "Back?"})])  # fmt: skip
    return await create_campaign(api, sec, spec)


async def _user_id(api: httpx.AsyncClient, sec: SectionKeys, dyid: str) -> str:
    r = await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _outcomes(env: WorkflowEnvironment, sec: SectionKeys, campaign: str, user_id: str) -> list[str]:
    result = await journey_result(env.client, sec, campaign, user_id)
    return [d.outcome for d in result.decisions if d.outcome in ("sent", "failed")]


def _rows(store: Store, sec: SectionKeys) -> list[OptIn]:
    with store.session() as s:
        return list(s.exec(select(OptIn).where(OptIn.section_id == sec.id, OptIn.channel == "web_push")).all())


def _endpoint_hash(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()


async def test_opt_out_written_another_way_stops_sends(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """Opted in by the browser's JSON, opted out through the backend's re-serialisation (API) and
    PHP's (event): the next journey finds the user unreachable and the endpoint is never called."""
    campaign = await _web_push_campaign(api, section)
    for opt_out in ("api", "event"):
        browser = Browser(fresh_provider.url(f"/push/optout-{opt_out}"))
        fresh_provider.default(f"/push/optout-{opt_out}", Reply(201, ""))
        dyid = new_dyid()
        await collect(api, section, dyid, _optin(browser.as_browser_sends_it()))
        if opt_out == "api":
            await _api_opt(api, section, "opt-out", browser.as_backend_sends_it())
        else:
            await collect(api, section, dyid, _optin(browser.as_php_sends_it(), optout=True))
        await collect(api, section, dyid, add_to_cart(f"sku-{opt_out}"))
        assert await _outcomes(env, section, campaign, await _user_id(api, section, dyid)) == [], opt_out
        assert fresh_provider.to(f"/push/optout-{opt_out}") == [], opt_out


async def test_resubscription_written_another_way_is_one_subscription(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """The same browser subscription sent by two visits (cookies cleared between: two device ids),
    written differently each time: one opt-in row, held by the latest visitor, so one message."""
    campaign = await _web_push_campaign(api, section)
    browser = Browser(fresh_provider.url("/push/twice"))
    fresh_provider.default("/push/twice", Reply(201, ""))
    first, second = new_dyid(), new_dyid()
    await collect(api, section, first, _optin(browser.as_browser_sends_it()), add_to_cart("sku-1"))
    await collect(api, section, second, _optin(browser.as_backend_sends_it()), add_to_cart("sku-1"))
    outcomes = [await _outcomes(env, section, campaign, await _user_id(api, section, d)) for d in (first, second)]
    assert len(fresh_provider.to("/push/twice")) == 1, outcomes
    assert outcomes[1] == ["sent"], outcomes
    assert len(_rows(store, section)) == 1


async def test_new_keys_under_the_same_endpoint_are_used_for_sends(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """A re-subscription (API opt-in, written by the backend) with new keys for the same endpoint
    replaces the stored subscription: the send is encrypted to the new keys."""
    campaign = await _web_push_campaign(api, section)
    browser = Browser(fresh_provider.url("/push/rotated"))
    got: list[Any] = []

    def receive(req: Received) -> Reply:
        got.append(browser.decrypt(req.body))  # raises (a 500 to the sender) unless sealed to the new keys
        return Reply(201, "")

    fresh_provider.handler("/push/rotated", receive)
    dyid = new_dyid()
    await collect(api, section, dyid, _optin(browser.as_browser_sends_it()))
    browser.rotate()
    await _api_opt(api, section, "opt-in", browser.as_backend_sends_it())
    await collect(api, section, dyid, add_to_cart("sku-rotated"))
    assert await _outcomes(env, section, campaign, await _user_id(api, section, dyid)) == ["sent"]
    assert got == [{"title": "Back?"}]
    assert len(_rows(store, section)) == 1


async def test_row_stored_under_the_raw_json_hash_is_found_and_moved(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """An opt-in stored before subscriptions were keyed by endpoint (opt-in row and user identifier
    under the raw JSON's hash): an opt-out sent the same way finds it, moves row and identifier to
    the endpoint's hash, and the user is no longer sent to; a later opt-in written another way
    finds the moved row."""
    campaign = await _web_push_campaign(api, section)
    browser = Browser(fresh_provider.url("/push/legacy"))
    fresh_provider.default("/push/legacy", Reply(201, ""))
    token = browser.as_browser_sends_it()
    dyid = new_dyid()
    await collect(api, section, dyid, _optin(token))
    user_id = await _user_id(api, section, dyid)
    raw, canonical = hashlib.sha256(token.encode()).hexdigest(), _endpoint_hash(browser.endpoint)
    with store.session() as s:  # as an older Rejoin stored it
        s.execute(update(OptIn).where(col(OptIn.section_id) == section.id).values(value_hash=raw))
        ident = (col(UserIdentifier.section_id) == section.id) & (col(UserIdentifier.kind) == "web_push")
        s.execute(update(UserIdentifier).where(ident).values(value_hash=raw))
    await _api_opt(api, section, "opt-out", token)
    rows = _rows(store, section)
    assert [(r.value_hash, r.opted_in) for r in rows] == [(canonical, False)]
    with store.session() as s:
        held = s.exec(select(UserIdentifier).where(ident)).all()
        assert [(i.value_hash, i.user_id) for i in held] == [(canonical, user_id)]
    await collect(api, section, dyid, add_to_cart("sku-legacy"))
    assert await _outcomes(env, section, campaign, user_id) == []
    assert fresh_provider.to("/push/legacy") == []
    await _api_opt(api, section, "opt-in", browser.as_php_sends_it())
    assert [(r.id, r.opted_in) for r in _rows(store, section)] == [(rows[0].id, True)]
    # The same through a push event: found by the raw hash, moved, the identifier with it.
    token = browser.as_php_sends_it()
    _store_as_before(store, section, token)
    await collect(api, section, dyid, _optin(token, optout=True))
    assert [(r.id, r.value_hash, r.opted_in) for r in _rows(store, section)] == [(rows[0].id, canonical, False)]
    with store.session() as s:
        assert [(i.value_hash, i.user_id) for i in s.exec(select(UserIdentifier).where(ident)).all()] == [
            (canonical, user_id)
        ]


def test_web_push_key_is_the_endpoints_hash_and_falls_back_to_the_raw_value() -> None:
    from domain.hashing import web_push_key

    browser = Browser("https://push.example/send/abc")
    keys = {web_push_key(v) for v in (browser.as_browser_sends_it(), browser.as_backend_sends_it(),
                                      browser.as_php_sends_it())}  # fmt: skip
    assert keys == {_endpoint_hash("https://push.example/send/abc")}
    assert web_push_key("legacy-token") == hashlib.sha256(b"legacy-token").hexdigest()
    assert web_push_key('{"no": "endpoint"}') == hashlib.sha256(b'{"no": "endpoint"}').hexdigest()


async def test_stored_rows_of_one_endpoint_are_rekeyed_and_merged_once(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """Two opt-ins stored before subscriptions were keyed by endpoint, one subscription written two
    ways by two visits (two rows, two users, raw JSON hashes): `rekey_web_push` folds them into one
    row under the endpoint's hash, held by the latest visitor, with the newest keys; an opt-out
    written a third way then stops every send."""
    from store.reachability import rekey_web_push

    campaign = await _web_push_campaign(api, section)
    browser = Browser(fresh_provider.url("/push/migrated"))
    fresh_provider.default("/push/migrated", Reply(201, ""))
    first, second = new_dyid(), new_dyid()
    tokens = [browser.as_browser_sends_it()]
    await collect(api, section, first, _optin(tokens[0]))
    users = [await _user_id(api, section, first)]
    _store_as_before(store, section, tokens[0])
    browser.rotate()
    tokens.append(browser.as_backend_sends_it())
    await collect(api, section, second, _optin(tokens[1]))
    users.append(await _user_id(api, section, second))
    _store_as_before(store, section, tokens[1])
    assert len(_rows(store, section)) == 2
    box = app_state(api).box
    with store.session() as s:
        assert rekey_web_push(s, box.decrypt) == 2
    with store.session() as s:
        assert rekey_web_push(s, box.decrypt) == 0  # idempotent
    rows = _rows(store, section)
    assert [r.value_hash for r in rows] == [_endpoint_hash(browser.endpoint)]
    assert box.decrypt(rows[0].value_enc) == tokens[1]  # the newest keys
    with store.session() as s:
        held = s.exec(select(UserIdentifier).where(UserIdentifier.section_id == section.id)).all()
        assert [(i.kind, i.value_hash, i.user_id) for i in held] == [("web_push", rows[0].value_hash, users[1])]
    await _api_opt(api, section, "opt-out", browser.as_php_sends_it())
    for dyid, uid in zip((first, second), users):
        await collect(api, section, dyid, add_to_cart("sku-migrated"))
        assert await _outcomes(env, section, campaign, uid) == []
    assert fresh_provider.to("/push/migrated") == []


def _store_as_before(store: Store, sec: SectionKeys, token: str) -> None:
    """Re-key the row (and identifier) just stored for `token` to the raw JSON's hash, as before."""
    canonical = json.loads(token)["endpoint"]
    old, raw = _endpoint_hash(canonical), hashlib.sha256(token.encode()).hexdigest()
    with store.session() as s:
        s.execute(update(OptIn).where(col(OptIn.value_hash) == old).values(value_hash=raw))
        s.execute(update(UserIdentifier).where(col(UserIdentifier.value_hash) == old).values(value_hash=raw))


async def test_the_api_start_rekeys_stored_rows_once(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store, settings: Settings,
) -> None:  # fmt: skip
    """The first API start on a database (`store/migrations.py`, "rekey_web_push") moves rows stored
    under the raw JSON's hash; later starts find the migration recorded and read nothing."""
    from api.main import create_app
    from store.migrations import DataMigration

    browser = Browser(fresh_provider.url("/push/started"))
    token = browser.as_browser_sends_it()
    await collect(api, section, new_dyid(), _optin(token))
    _store_as_before(store, section, token)
    with store.session() as s:
        s.execute(delete(DataMigration))  # as on a database the upgrade has not started on yet
    create_app(settings, store=store, temporal=env.client)
    assert [r.value_hash for r in _rows(store, section)] == [_endpoint_hash(browser.endpoint)]
    _store_as_before(store, section, token)
    create_app(settings, store=store, temporal=env.client)  # recorded: not run again
    assert [r.value_hash for r in _rows(store, section)] == [hashlib.sha256(token.encode()).hexdigest()]


async def test_a_flood_of_subscriptions_keeps_only_the_newest(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """Made-up subscriptions sent for one device (tens of thousands made every decision of that user
    read them all): only the newest `MAX_PUSH_SUBSCRIPTIONS` stay, identifiers and opt-ins alike,
    and the newest one is the one a journey pushes to."""
    from api.ingestion import MAX_PUSH_SUBSCRIPTIONS

    campaign = await _web_push_campaign(api, section)
    dyid = new_dyid()
    browsers = [Browser(fresh_provider.url(f"/push/flood-{i}")) for i in range(MAX_PUSH_SUBSCRIPTIONS + 6)]
    batch = [_optin(b.as_browser_sends_it()) for b in browsers[:-1]]  # one request, then the last alone
    await collect(api, section, dyid, *batch)
    newest = browsers[-1]
    fresh_provider.default("/push/flood-newest", Reply(201, ""))
    newest.endpoint = fresh_provider.url("/push/flood-newest")
    await collect(api, section, dyid, _optin(newest.as_browser_sends_it()))
    uid = await _user_id(api, section, dyid)
    with store.session() as s:
        idents = s.exec(select(UserIdentifier.value_hash).where(
            UserIdentifier.user_id == uid, UserIdentifier.kind == "web_push")).all()  # fmt: skip
    assert len(idents) == MAX_PUSH_SUBSCRIPTIONS and _endpoint_hash(newest.endpoint) in idents
    assert len(_rows(store, section)) == MAX_PUSH_SUBSCRIPTIONS  # their opt-ins went with them
    await collect(api, section, dyid, add_to_cart("sku-flood"))
    assert await _outcomes(env, section, campaign, uid) == ["sent"]
    assert len(fresh_provider.to("/push/flood-newest")) == 1
