"""An integration's own provider timeout (`timeout_seconds`): validated on save, kept, shown, and
waited for by the test call exactly as deliveries wait for it.

A vendor that always answers after 12 s could never succeed with the fixed 10 s read timeout (a
trial: the same SMS sent again and again). `timeout_seconds` (1 to 60, at most 80% of a delivery
attempt) lets its integration wait longer, or less."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from providers.registry import TIMEOUT_KEY
from store.engine import Store
from store.tables import Integration
from tests.helpers import SectionKeys
from tests.provider_server import ProviderServer, Reply


def _body(provider: ProviderServer, path: str, **extra: Any) -> dict[str, Any]:
    return {"channel": "email", "name": "ESP", "kind": "custom_http", "config": {"url": provider.url(path)}, **extra}


def _refusal(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "timeout_seconds"], r.text
    return str(problem["msg"])


@pytest.mark.parametrize("value", [0, 0.5, 61, -3])
async def test_timeout_seconds_out_of_range_is_refused_naming_the_field(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, value: float
) -> None:
    r = await api.post("/api/v1/integrations", json=_body(fresh_provider, "/esp", timeout_seconds=value),
                       headers=section.mgmt)  # fmt: skip
    _refusal(r)


async def test_timeout_seconds_past_the_attempt_or_without_http_is_refused(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """The tests' attempts last 10 s: a call may take 8 s of it. More would be clipped at every send,
    so it is refused, saying how much is allowed; the outbox and SMTP make no HTTP call."""
    message = _refusal(
        await api.post("/api/v1/integrations", json=_body(fresh_provider, "/esp", timeout_seconds=9),
                       headers=section.mgmt)  # fmt: skip
    )
    assert "at most 8 s" in message and "REJOIN_DELIVERY_TIMEOUT" in message, message
    outbox = {"channel": "email", "name": "Outbox", "kind": "outbox", "timeout_seconds": 5}
    assert "outbox" in _refusal(await api.post("/api/v1/integrations", json=outbox, headers=section.mgmt))


async def test_timeout_seconds_is_kept_shown_and_replaced(
    api: httpx.AsyncClient, section: SectionKeys, store: Store, fresh_provider: ProviderServer
) -> None:
    r = await api.post("/api/v1/integrations", json=_body(fresh_provider, "/esp", timeout_seconds=7.5),
                       headers=section.mgmt)  # fmt: skip
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["timeout_seconds"] == 7.5 and TIMEOUT_KEY not in made["config"], made
    r = await api.get(f"/api/v1/integrations/{made['id']}", headers=section.mgmt)
    assert r.json()["timeout_seconds"] == 7.5
    with store.session() as s:
        row = s.get(Integration, made["id"])
        assert row is not None and row.config[TIMEOUT_KEY] == 7.5  # where every send reads it
    r = await api.put(f"/api/v1/integrations/{made['id']}", json=_body(fresh_provider, "/esp"), headers=section.mgmt)
    assert r.status_code == 200 and r.json()["timeout_seconds"] is None, r.text


async def test_the_test_call_waits_the_integrations_own_timeout(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """A vendor answering in 1.6 s: with `timeout_seconds` 1 the test call times out, saying 1 s, as a
    delivery would; with 3 it gets the answer. Before: the field was ignored (the default 8 s here)."""
    path = "/esp-" + secrets.token_hex(3)
    fresh_provider.default(path, Reply(200, {"id": "m1"}, delay=1.6))
    r = await api.post("/api/v1/integrations", json=_body(fresh_provider, path, timeout_seconds=1),
                       headers=section.mgmt)  # fmt: skip
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    r = await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {}}, headers=section.mgmt)
    out = r.json()
    assert r.status_code == 200 and out["ok"] is False, r.text
    assert out["error"].startswith("timeout") and "(1 s," in out["error"] and "timeout_seconds" in out["error"], out
    r = await api.put(f"/api/v1/integrations/{iid}", json=_body(fresh_provider, path, timeout_seconds=3),
                      headers=section.mgmt)  # fmt: skip
    assert r.status_code == 200, r.text
    r = await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {}}, headers=section.mgmt)
    assert r.json()["ok"] is True, r.text
