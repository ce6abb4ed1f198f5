"""Test helpers: sections, campaigns, users and events through the real API."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlmodel import col, select
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from api.deps import AppState
from api.main import create_app
from settings import Settings
from store.engine import Store
from store.tables import Journey
from workflows.ids import journey_workflow_id
from workflows.journey import JourneyWorkflow
from workflows.models import JourneyResult

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
ADMIN = {"Authorization": "Bearer test-admin-key"}


@dataclass
class SectionKeys:
    id: str
    management: str
    ingestion: str

    @property
    def mgmt(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.management}"}

    @property
    def ing(self) -> dict[str, str]:
        return {"dy-api-key": self.ingestion}


@asynccontextmanager
async def api_with(settings: Settings, store: Store, env: WorkflowEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    """A second API on the session's store and Temporal (the session's worker runs its workflows)
    with other `settings`: an operator's setting under test."""
    app = create_app(settings, store=store, temporal=env.client)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test", timeout=60
    ) as client:
        yield client


def app_state(api: httpx.AsyncClient) -> AppState:
    """The shared state of the app behind the test client (ASGI transport)."""
    transport = api._transport
    assert isinstance(transport, httpx.ASGITransport)
    state: AppState = transport.app.state.rejoin  # type: ignore[attr-defined]
    return state


async def make_section(api: httpx.AsyncClient, name: str = "shop", **extra: Any) -> SectionKeys:
    r = await api.post("/api/v1/sections", json={"name": name, **extra}, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    return SectionKeys(body["id"], body["management_key"]["key"], body["ingestion_key"]["key"])


async def add_integration(
    api: httpx.AsyncClient, sec: SectionKeys, channel: str = "email", kind: str = "outbox", **extra: Any
) -> dict[str, Any]:
    body = {"channel": channel, "name": f"{channel} {kind}", "kind": kind,
            "identifier_type": "phone" if channel == "sms" else "email", **extra}  # fmt: skip
    r = await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
    assert r.status_code == 201, r.text
    return dict(r.json())


def custom_http_integration(url: str, headers: Any, auth: dict[str, Any]) -> dict[str, Any]:
    """The body creating an email integration "My ESP" that POSTs to `url` (custom HTTP)."""
    return {
        "channel": "email",
        "name": "My ESP",
        "kind": "custom_http",
        "identifier_type": "email",
        "config": {"url": url, "headers": headers, "auth": auth},
    }


def step(name: str, wait: str | None = None, channels: tuple[str, ...] = ("email",), payload: Any = None) -> dict[str, Any]:
    s: dict[str, Any] = {"name": name, "messages": {c: {"payload": payload} for c in channels}}
    if wait:
        s["wait"] = wait
    return s


def cart_campaign(name: str = "Cart", wait: str = "PT1H", steps: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "type": "cart_abandonment",
        "trigger": {"wait": wait},
        "channel_priority": ["email", "sms"],
        "variations": [{"id": "a", "name": "A", "share": 100, "steps": steps or [step("Reminder")]}],
    }
    spec.update(extra)
    return spec


def holdout_campaign() -> dict[str, Any]:
    """A cart campaign that allocates everyone to its control (holdout) variation."""
    return cart_campaign(variations=[
        {"id": "ctl", "name": "Holdout", "share": 100, "control": True},
        {"id": "a", "name": "A", "share": 0, "steps": [step("x")]}])  # fmt: skip


async def create_campaign(api: httpx.AsyncClient, sec: SectionKeys, spec: dict[str, Any], activate: bool = True) -> str:
    r = await api.post("/api/v1/campaigns", json=spec, headers=sec.mgmt)
    assert r.status_code == 201, r.text
    cid = str(r.json()["id"])
    if activate:
        r = await api.post(f"/api/v1/campaigns/{cid}/activate", headers=sec.mgmt)
        assert r.status_code == 200, r.text
    return cid


def new_dyid() -> str:
    return str(secrets.randbelow(10**18))


def email_for(dyid: str) -> str:
    return f"user{dyid}@example.com"


async def collect(api: httpx.AsyncClient, sec: SectionKeys, dyid: str, *events: dict[str, Any], consent: bool = True,
                  locale: str | None = None) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"user": {"dyid": dyid, "active_consent_accepted": consent}, "events": list(events)}
    if locale:
        body["context"] = {"page": {"type": "OTHER", "locale": locale}}
    r = await api.post("/v2/collect/user/event", json=body, headers=sec.ing)
    assert r.status_code == 202, r.text
    return dict(r.json())


def login(email: str, phone: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"dyType": "login-v1", "hashedEmail": hashlib.sha256(email.lower().encode()).hexdigest()}
    if phone:
        props["secondaryIdentifiers"] = [{"type": "phoneNumber", "value": phone}]
    return {"name": "Login", "properties": props}


def add_to_cart(sku: str, price: float = 10.0, cart: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    items = cart if cart is not None else [(sku, price)]
    return {"name": "Add to Cart", "properties": {
        "dyType": "add-to-cart-v1", "value": price, "productId": sku, "quantity": 1,
        "cart": [{"productId": s, "quantity": 1, "itemPrice": p} for s, p in items]}}  # fmt: skip


def sync_cart(items: list[tuple[str, float]]) -> dict[str, Any]:
    return {"name": "Sync Cart", "properties": {
        "dyType": "sync-cart-v1", "value": sum(p for _, p in items),
        "cart": [{"productId": s, "quantity": 1, "itemPrice": p} for s, p in items]}}  # fmt: skip


def purchase(items: list[tuple[str, float]], tx: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"dyType": "purchase-v1", "value": sum(p for _, p in items),
                             "cart": [{"productId": s, "quantity": 1, "itemPrice": p} for s, p in items]}  # fmt: skip
    if tx:
        props["uniqueTransactionId"] = tx
    return {"name": "Purchase", "properties": props}


async def opt_in(api: httpx.AsyncClient, sec: SectionKeys, channel: str, id_type: str, value: str) -> None:
    r = await api.post(f"/v2/userdata/channels/{channel}/opt-in",
                       json={"identifier": {"type": id_type, "value": value}}, headers=sec.ing)  # fmt: skip
    assert r.status_code == 200, r.text


async def reachable_user(api: httpx.AsyncClient, sec: SectionKeys, phone: str | None = None) -> tuple[str, str]:
    """A new identified user opted in to email (and SMS when a phone is given): (dyid, user id)."""
    dyid = new_dyid()
    email = email_for(dyid)
    await opt_in(api, sec, "email", "email", email)
    if phone:
        await opt_in(api, sec, "sms", "phoneNumber", phone)
    await collect(api, sec, dyid, login(email, phone))
    r = await api.get(f"/api/v1/users/{dyid}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return dyid, str(r.json()["id"])


def journey_handle(client: Client, sec: SectionKeys, campaign_id: str, user_id: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(journey_workflow_id(sec.id, campaign_id, user_id))


async def journey_result(client: Client, sec: SectionKeys, campaign_id: str, user_id: str, timeout: float = 60) -> JourneyResult:
    handle = client.get_workflow_handle_for(JourneyWorkflow.run, journey_workflow_id(sec.id, campaign_id, user_id))
    return await asyncio.wait_for(handle.result(), timeout)


async def outbox(api: httpx.AsyncClient, sec: SectionKeys, **params: Any) -> list[dict[str, Any]]:
    r = await api.get("/api/v1/outbox", params=params, headers=sec.mgmt)
    assert r.status_code == 200, r.text
    return list(r.json())


async def eventually(fn: Callable[[], Awaitable[T]], timeout: float = 15.0, interval: float = 0.2) -> T:
    """Retry `fn` until it stops raising AssertionError (visibility is eventually consistent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await fn()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(interval)


def stored_journeys(store: Store, campaign_id: str, user_id: str) -> list[Journey]:
    """The store's journey rows of a user in a campaign, oldest trigger first."""
    with store.session() as s:
        q = select(Journey).where(Journey.campaign_id == campaign_id, Journey.user_id == user_id)
        return list(s.exec(q.order_by(col(Journey.triggered_at))).all())


def start_worker_with(setting: str, value: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`rejoin worker` run with one setting changed and nothing else of this shell's REJOIN_/TEMPORAL_ environment.

    The Temporal address points at a closed port: a worker that refuses a bad setting must do so before it
    connects anywhere, so the caller sees the refusal, not a connection error.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REJOIN_", "TEMPORAL_"))}
    env.update({setting: value, "REJOIN_DATA_DIR": str(data_dir), "TEMPORAL_ADDRESS": "127.0.0.1:9"})
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
