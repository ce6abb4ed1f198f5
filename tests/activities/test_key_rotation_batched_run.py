"""An operator rotates an integration's key while a batched run (a scheduled campaign,
`BroadcastWorkflow`) is calling the vendor: the new key saved in Rejoin, the old one revoked at the
vendor. The batch read the integration once, before its calls, so the calls under way carry the old
key and get a 401. That refusal is of credentials the integration no longer has: each recipient
waits its own backoff and a later batch, which reads the integration again, sends the message its
first attempt composed with the new key (`activities/provider_retry.py::refused_replaced_credentials`),
as a journey's step does (tests/activities/test_key_rotation_mid_call.py). Before, every recipient
caught mid-call failed for good.

Both ways a batch prepares its recipients: in chunks (activities/broadcast_plain.py) and one at a
time (a throttled run, `_prepare`). Real Temporal test server, real store, local provider server."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from store.engine import Store
from tests.audience.feed_helpers import batch_campaign, campaign_sends, push_user, run_result
from tests.helpers import SectionKeys, add_integration, create_campaign, eventually
from tests.provider_server import ProviderServer, Received, Reply

RECIPIENTS = 3
TOKEN = re.compile(rb"tok-[0-9a-f]{12}")


def _config(provider: ProviderServer, path: str, key: str) -> dict[str, Any]:
    return {"url": provider.url(path), "headers": [{"key": "X-Api-Key", "value": key, "secret": True}]}


async def _push_integration(
    api: httpx.AsyncClient, sec: SectionKeys, provider: ProviderServer, key: str
) -> tuple[str, str]:
    """An app push integration posting to the local provider with `key`: (its id, the path it posts to)."""
    path = "/push-" + secrets.token_hex(3)
    found = await add_integration(api, sec, channel="app_push", kind="custom_http", config=_config(provider, path, key))
    return str(found["id"]), path


async def _scheduled_run(
    api: httpx.AsyncClient, sec: SectionKeys, store: Store, throttle: float | None
) -> tuple[str, str]:
    """RECIPIENTS push users and a scheduled campaign to them, its run started: (campaign, run)."""
    for _ in range(RECIPIENTS):
        await push_user(api, sec, store)
    extra = {"throttle_per_second": throttle} if throttle else {}
    spec = batch_campaign("scheduled", channels=("app_push",), schedule={"send_at": datetime.now(UTC).isoformat()},
                          **extra)  # fmt: skip
    cid = await create_campaign(api, sec, spec)
    r = await api.post(f"/api/v1/campaigns/{cid}/runs", headers=sec.mgmt)
    assert r.status_code == 202, r.text
    return cid, str(r.json()["id"])


def _token(req: Received) -> str:
    found = TOKEN.search(req.body)
    assert found is not None, req.body
    return found.group().decode()


@pytest.mark.parametrize("throttle", [None, 20.0], ids=["chunked", "one-at-a-time"])
async def test_a_key_rotated_during_a_batch_is_retried_with_the_new_key(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer, throttle: float | None,
) -> None:  # fmt: skip
    old, new = "k-old-" + secrets.token_hex(4), "k-new-" + secrets.token_hex(4)
    integration_id, path = await _push_integration(api, section, fresh_provider, old)

    def vendor(req: Received) -> Reply:  # the old key is revoked by the time its calls are answered
        if req.headers.get("x-api-key") == new:
            return Reply(200, {"id": "m-" + _token(req)})
        return Reply(401, "invalid API key", delay=3.0)

    fresh_provider.handler(path, vendor)
    cid, run_id = await _scheduled_run(api, section, store, throttle)

    async def calls_under_way() -> None:
        assert fresh_provider.to(path), "no call yet"

    await eventually(calls_under_way)
    body = {"channel": "app_push", "name": "rotated", "kind": "custom_http", "identifier_type": "email",
            "config": _config(fresh_provider, path, new)}  # fmt: skip
    r = await api.put(f"/api/v1/integrations/{integration_id}", json=body, headers=section.mgmt)
    assert r.status_code == 200, r.text

    progress = await run_result(env.client, run_id, timeout=120)
    assert (progress.sent, progress.failed, progress.skipped) == (RECIPIENTS, 0, 0), progress
    calls = fresh_provider.to(path)
    with_new = [c for c in calls if c.headers.get("x-api-key") == new]
    with_old = [c for c in calls if c.headers.get("x-api-key") == old]
    assert len(with_new) + len(with_old) == len(calls)
    # Each recipient once with the new key, under its own idempotency key, after its one refused call.
    assert len(with_new) == RECIPIENTS and len({_token(c) for c in with_new}) == RECIPIENTS
    keys = [c.headers.get("idempotency-key") for c in with_new]
    assert len(set(keys)) == RECIPIENTS and all(keys), keys
    assert sorted(_token(c) for c in with_old) == sorted(_token(c) for c in with_new)
    # The retry sent the message its first attempt composed, under the same key: only the key changed.
    first = {_token(c): c for c in with_old}
    for retry in with_new:
        before = first[_token(retry)]
        assert retry.body == before.body and retry.headers.get("idempotency-key") == before.headers.get(
            "idempotency-key"
        )
    sends = await campaign_sends(store, cid)
    assert len(sends) == RECIPIENTS
    assert {(s.status, s.attempts, s.possible_duplicate, s.provider_status) for s in sends} == {
        ("accepted", 2, False, 200)
    }, sends
    assert {s.key for s in sends} == set(keys)


async def test_a_401_with_the_current_key_still_fails_the_recipients_for_good(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, store: Store,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    """No rotation: a refused key is the operator's to fix. One call per recipient, each failed."""
    _, path = await _push_integration(api, section, fresh_provider, "k-" + secrets.token_hex(4))
    fresh_provider.default(path, Reply(401, "invalid API key"))
    cid, run_id = await _scheduled_run(api, section, store, None)
    progress = await run_result(env.client, run_id, timeout=120)
    assert (progress.sent, progress.failed) == (0, RECIPIENTS), progress
    calls = fresh_provider.to(path)
    assert len(calls) == RECIPIENTS and len({_token(c) for c in calls}) == RECIPIENTS
    sends = await campaign_sends(store, cid)
    assert {(s.status, s.attempts, s.provider_status) for s in sends} == {("failed", 1, 401)}, sends
