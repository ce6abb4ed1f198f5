"""A Web Push subscription opted in by event (`message-optin-v1`, api/ingestion.py) and by the opt-in
API (api/routes/userdata.py) is one `OptIn` row (unique on section, channel and the endpoint's
hash): both paths must lock the same key for it, or on PostgreSQL the two racing on a new
subscription both read "no row" and the second insert is a duplicate-key 500. The event path
locked one key per push channel and the API one per identifier hash, so they never waited for
each other."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from sqlmodel import Session, func, select

from api import ingestion
from api.routes import userdata
from domain.events import EventKind, NormalizedEvent
from domain.hashing import sha256_hex
from store.engine import Store
from store.locks import opt_in_lock_key
from store.tables import OptIn
from tests.helpers import SectionKeys, add_integration
from tests.providers.keys import ec_key, pem


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _subscription(endpoint: str) -> dict[str, Any]:
    """A PushSubscription as a browser gives it (the key is not used: nothing is sent here)."""
    keys = {"p256dh": _b64url(b"\x04" + os.urandom(64)), "auth": _b64url(os.urandom(16))}
    return {"endpoint": endpoint, "expirationTime": None, "keys": keys}


def _as_browser_sends_it(sub: dict[str, Any]) -> str:
    return json.dumps(sub, separators=(",", ":"))


def _as_backend_sends_it(sub: dict[str, Any]) -> str:
    """Another serialisation of the same subscription: sorted keys, spaces, no `expirationTime`."""
    return json.dumps({k: v for k, v in sub.items() if k != "expirationTime"}, sort_keys=True, indent=1)


def _push_event(token: str) -> dict[str, Any]:
    return {"name": "Push opt-in", "properties": {"dyType": "message-optin-v1", "channelType": "WEB_PUSH",
                                                  "pushID": token}}  # fmt: skip


async def _web_push_integration(api: httpx.AsyncClient, section: SectionKeys) -> None:
    config = {"vapid_private_key": pem(ec_key()), "subject": "mailto:ops@shop.example"}
    await add_integration(api, section, "web_push", kind="webpush", identifier_type="custom", config=config)


async def _by_event(api: httpx.AsyncClient, section: SectionKeys, token: str) -> int:
    body = {"user": {"dyid": f"d-{uuid.uuid4().hex[:10]}", "active_consent_accepted": True},
            "events": [_push_event(token)]}  # fmt: skip
    r = await api.post("/v2/collect/user/event", json=body, headers=section.ing)
    return r.status_code


async def _by_api(api: httpx.AsyncClient, section: SectionKeys, value: str) -> int:
    body = {"identifier": {"type": "custom", "value": value}}
    r = await api.post("/v2/userdata/channels/web_push/opt-in", json=body, headers=section.ing)
    return r.status_code


def test_the_event_path_locks_a_push_token_by_its_hash() -> None:
    """The key of an opt-in event is the opt-in row's (`opt_in_lock_key`): the endpoint's hash for
    Web Push, the token's for app push; ordinary events lock no push key."""
    sub = _subscription("https://push.example/sub/1")
    web = NormalizedEvent(
        kind=EventKind.MESSAGE_OPTIN, name="Push", push_token=_as_browser_sends_it(sub), push_channel="WEB_PUSH"
    )
    app = NormalizedEvent(kind=EventKind.MESSAGE_OPTOUT, name="Push", push_token="fcm-1", push_channel="APP_PUSH")
    keys = ingestion.identity_lock_keys("sec_1", "dev-1", None, [web, app])
    assert keys == [
        "id/sec_1/device/dev-1",
        opt_in_lock_key("sec_1", "web_push", sha256_hex("https://push.example/sub/1")),
        opt_in_lock_key("sec_1", "app_push", sha256_hex("fcm-1")),
    ]


async def test_an_opt_in_by_event_and_by_the_api_lock_the_same_key(
    api: httpx.AsyncClient, section: SectionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each path actually locks, for one subscription written two ways (any database)."""
    await _web_push_integration(api, section)
    locked: dict[str, set[str]] = {"event": set(), "api": set()}

    def by_event(s: Session, keys: Iterable[str]) -> None:
        locked["event"].update(keys)

    def by_api(s: Session, keys: Iterable[str]) -> None:
        locked["api"].update(keys)

    monkeypatch.setattr(ingestion, "lock_keys", by_event)
    monkeypatch.setattr(userdata, "lock_keys", by_api)
    sub = _subscription(f"https://push.example/sub/{uuid.uuid4().hex}")
    assert await _by_event(api, section, _as_browser_sends_it(sub)) == 202
    assert await _by_api(api, section, _as_backend_sends_it(sub)) == 200
    assert locked["api"] and locked["api"] <= locked["event"], locked


async def test_concurrent_opt_ins_of_one_subscription_by_event_and_api_are_one_row(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """PostgreSQL: both paths racing on new subscriptions (SQLite's write lock serialises them)."""
    await _web_push_integration(api, section)
    subs = [_subscription(f"https://push.example/sub/{uuid.uuid4().hex}") for _ in range(6)]
    calls = []
    for sub in subs:
        browser, backend = _as_browser_sends_it(sub), _as_backend_sends_it(sub)
        for _ in range(3):
            calls += [_by_event(api, section, browser), _by_api(api, section, backend)]
    codes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(c in (200, 202) for c in codes), codes
    with store.session() as s:
        rows = s.exec(select(func.count()).select_from(OptIn).where(OptIn.section_id == section.id)).one()
    assert rows == len(subs), rows
