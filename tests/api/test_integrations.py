"""Integrations API: CRUD, masked encrypted secrets, OAuth2 validation on save, test call, rotation."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from providers.secret_fields import MASK
from security.crypto import SecretBox
from security.rotation import rotate_all
from settings import Settings
from store.engine import Store
from store.tables import Integration
from tests.helpers import ADMIN, SectionKeys, custom_http_integration, make_section
from tests.provider_server import ProviderServer, Received, Reply

PASSWORD = "pa55-Very-Secret-1"
HEADER_SECRET = "hdr-secret-XYZ-2"
CLIENT_SECRET = "client-secret-QRS-3"


def token_endpoint(server: ProviderServer, path: str = "/oauth/token", secret: str = CLIENT_SECRET) -> list[Received]:
    """An OAuth2 token endpoint accepting client `cid` with `secret` (basic or post); returns its request log."""
    calls: list[Received] = []

    def handle(req: Received) -> Reply:
        calls.append(req)
        form = dict(p.split("=", 1) for p in req.body.decode().split("&") if "=" in p)
        auth = req.headers.get("authorization", "")
        if auth.startswith("Basic "):
            cid, _, sec = base64.b64decode(auth[6:]).decode().partition(":")
        else:
            cid, sec = form.get("app_id", form.get("client_id", "")), form.get("app_secret", form.get("client_secret", ""))
        if form.get("grant_type") != "client_credentials" or cid != "cid" or sec != secret:
            return Reply(401, {"error": "invalid_client"})
        return Reply(200, {"access_token": f"tok-{len(calls)}", "token_type": "Bearer", "expires_in": 3600})

    server.handler(path, handle)
    return calls


def custom(server: ProviderServer, auth: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = [{"key": "X-Plain", "value": "visible"}, {"key": "X-Api-Key", "value": HEADER_SECRET, "secret": True}]
    basic = {"type": "basic", "username": "shop", "password": PASSWORD}
    return custom_http_integration(server.url("/send"), headers, auth or basic)


async def test_crud_returns_secrets_masked_and_keeps_them_on_update(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, store: Store
) -> None:
    """Secrets come back masked, are stored encrypted, and a masked value on update keeps the secret."""
    r = await api.post("/api/v1/integrations", json=custom(fresh_provider), headers=section.mgmt)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["config"]["auth"]["password"] == MASK
    assert created["config"]["headers"][1]["value"] == MASK and created["config"]["headers"][0]["value"] == "visible"
    assert PASSWORD not in r.text and HEADER_SECRET not in r.text
    with store.session() as s:
        row = s.get(Integration, created["id"])
        assert row is not None and row.secrets_enc and PASSWORD not in row.secrets_enc
        assert PASSWORD not in json.dumps(row.config)
    iid = created["id"]
    got = await api.get(f"/api/v1/integrations/{iid}", headers=section.mgmt)
    assert got.status_code == 200 and got.json()["config"] == created["config"]
    body = custom(fresh_provider)
    body["name"] = "Renamed"
    body["config"] = got.json()["config"]  # masked values sent back unchanged
    r = await api.put(f"/api/v1/integrations/{iid}", json=body, headers=section.mgmt)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Renamed"
    r = await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {"hello": 1}}, headers=section.mgmt)
    assert r.json()["ok"] is True, r.text
    sent = fresh_provider.to("/send")[-1]
    assert sent.headers["authorization"] == "Basic " + base64.b64encode(f"shop:{PASSWORD}".encode()).decode()
    assert sent.headers["x-api-key"] == HEADER_SECRET and sent.headers["x-plain"] == "visible"
    assert sent.json() == {"hello": 1}
    r = await api.delete(f"/api/v1/integrations/{iid}", headers=section.mgmt)
    assert r.status_code == 204
    assert (await api.get(f"/api/v1/integrations/{iid}", headers=section.mgmt)).status_code == 404


async def test_invalid_oauth2_credentials_are_refused_and_nothing_saved(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """OAuth2 credentials the token URL refuses give a 422 and no integration is created."""
    token_endpoint(fresh_provider)
    auth = {"type": "oauth2", "token_url": fresh_provider.url("/oauth/token"), "client_id": "cid", "client_secret": "wrong"}
    r = await api.post("/api/v1/integrations", json=custom(fresh_provider, auth), headers=section.mgmt)
    assert r.status_code == 422, r.text
    assert "invalid_client" in r.text and r.json()["detail"][0]["loc"] == ["body", "config"]
    assert "wrong" not in r.text
    assert (await api.get("/api/v1/integrations", headers=section.mgmt)).json() == []


@pytest.mark.parametrize("client_auth", ["basic", "post"])
async def test_oauth2_integration_sends_bearer_token(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, client_auth: str
) -> None:
    """Valid OAuth2 credentials (basic or renamed post parameters) are saved and used as a Bearer token."""
    calls = token_endpoint(fresh_provider)
    auth = {"type": "oauth2", "token_url": fresh_provider.url("/oauth/token"), "client_id": "cid",
            "client_secret": CLIENT_SECRET, "client_auth": client_auth, "scope": "send"}  # fmt: skip
    if client_auth == "post":
        auth |= {"client_id_name": "app_id", "client_secret_name": "app_secret"}
    r = await api.post("/api/v1/integrations", json=custom(fresh_provider, auth), headers=section.mgmt)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["auth"]["client_secret"] == MASK and CLIENT_SECRET not in r.text
    assert len(calls) == 1
    form = calls[0].body.decode()
    assert "scope=send" in form
    if client_auth == "post":
        assert "app_id=cid" in form and "authorization" not in calls[0].headers
    r = await api.post(f"/api/v1/integrations/{r.json()['id']}/test", json={"payload": {}}, headers=section.mgmt)
    assert r.json()["ok"], r.text
    assert fresh_provider.to("/send")[-1].headers["authorization"].startswith("Bearer tok-")


async def test_test_call_returns_provider_status_headers_and_body(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """The test call reports what the provider answered, also for a rejection; an address the
    vendor echoes is masked either way, as in every answer Rejoin keeps."""
    r = await api.post("/api/v1/integrations", json=custom(fresh_provider), headers=section.mgmt)
    iid = r.json()["id"]
    fresh_provider.script("/send", Reply(400, {"error": "bad template"}, headers={"X-Trace": "t-1"}))
    r = await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {"x": "y"}}, headers=section.mgmt)
    out = r.json()
    assert r.status_code == 200 and out["ok"] is False
    assert out["status"] == 400 and out["headers"]["x-trace"] == "t-1"
    assert json.loads(out["body"]) == {"error": "bad template"}
    assert fresh_provider.to("/send")[-1].json() == {"x": "y"}
    for status in (400, 202):
        fresh_provider.script("/send", Reply(status, {"to": "jane.doe@example.com"}))
        r = await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {}}, headers=section.mgmt)
        assert r.json()["ok"] is (status == 202) and json.loads(r.json()["body"]) == {"to": "j***@example.com"}, r.text


async def test_config_errors_name_the_field(api: httpx.AsyncClient, section: SectionKeys) -> None:
    """A bad configuration is a 422 naming the field at fault; unknown kinds and wrong channels too."""
    body = {"channel": "email", "name": "x", "kind": "custom_http", "config": {"url": "not a url"}}
    r = await api.post("/api/v1/integrations", json=body, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "url"], r.text
    r = await api.post("/api/v1/integrations", json=body | {"kind": "pigeon"}, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "kind"]


async def test_secrets_never_logged(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No log line carries a secret through create, test call, a rejected call and listing, even
    with the HTTP client's request loggers (quiet by default: security/redact.py) at DEBUG."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    r = await api.post("/api/v1/integrations", json=custom(fresh_provider), headers=section.mgmt)
    iid = r.json()["id"]
    fresh_provider.script("/send", Reply(401, {"error": "no"}))
    await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {}}, headers=section.mgmt)
    await api.post(f"/api/v1/integrations/{iid}/test", json={"payload": {}}, headers=section.mgmt)
    listed = await api.get("/api/v1/integrations", headers=section.mgmt)
    assert PASSWORD not in listed.text and HEADER_SECRET not in listed.text
    assert caplog.records, "expected some logging to inspect"
    assert PASSWORD not in caplog.text and HEADER_SECRET not in caplog.text


async def test_rotation_reencrypts_under_the_newest_key(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, settings: Settings, store: Store
) -> None:
    """After rotation every stored secret decrypts with the new key alone."""
    r = await api.post("/api/v1/integrations", json=custom(fresh_provider), headers=section.mgmt)
    iid = r.json()["id"]
    new_key = Fernet.generate_key().decode()
    rotated = rotate_all(store, SecretBox([new_key, *settings.secret_keys]))
    assert rotated["integrations"] >= 1
    try:
        with store.session() as s:
            row = s.get(Integration, iid)
            assert row is not None and row.secrets_enc
            assert PASSWORD in SecretBox([new_key]).decrypt(row.secrets_enc)
            with pytest.raises(ValueError):
                SecretBox(settings.secret_keys).decrypt(row.secrets_enc)
    finally:  # back under the session key for the other tests
        rotate_all(store, SecretBox([*settings.secret_keys, new_key]))
    r = await api.post("/api/v1/admin/rotate-secrets", headers=ADMIN)
    assert r.status_code == 200 and r.json()["integrations"] >= 1


async def test_presets_validate_channel_and_mask_credentials(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """A preset only serves its channels, its credentials come back masked, one integration per channel."""
    twilio = {"channel": "email", "name": "Twilio", "kind": "twilio", "identifier_type": "phone",
              "config": {"account_sid": "AC0123456789abcdef", "auth_token": "tw-secret-9", "sender": "Shop"}}  # fmt: skip
    r = await api.post("/api/v1/integrations", json=twilio, headers=section.mgmt)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "channel"]
    r = await api.post("/api/v1/integrations", json=twilio | {"channel": "sms", "rate_limit_per_second": 10},
                       headers=section.mgmt)  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["config"]["auth_token"] == MASK and "tw-secret-9" not in r.text
    assert r.json()["rate_limit_per_second"] == 10
    r = await api.post("/api/v1/integrations", json=twilio | {"channel": "sms"}, headers=section.mgmt)
    assert r.status_code == 409


async def test_service_account_checked_against_token_uri_on_save(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer
) -> None:
    """An FCM service account that the token URI refuses is a 422; a good one is saved with the file masked."""
    from tests.providers.keys import service_account
    from tests.providers.test_presets import jwt_token_endpoint

    jwt_token_endpoint(fresh_provider, "https://www.googleapis.com/auth/firebase.messaging")
    account = service_account(fresh_provider.url("/token"))
    body = {"channel": "app_push", "name": "FCM", "kind": "fcm", "identifier_type": "custom",
            "config": {"service_account": account | {"client_email": "intruder@x.iam"}}}  # fmt: skip
    r = await api.post("/api/v1/integrations", json=body, headers=section.mgmt)
    assert r.status_code == 422 and "invalid_scope" in r.text, r.text
    body["config"] = {"service_account": account, "base_url": fresh_provider.url()}
    r = await api.post("/api/v1/integrations", json=body, headers=section.mgmt)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["service_account"] == MASK and "PRIVATE KEY" not in r.text


async def test_internal_urls_refused_on_save_and_test_call(
    env: WorkflowEnvironment, settings: Settings, store: Store, fresh_provider: ProviderServer
) -> None:
    """Without allow_private_urls, an integration URL (or token URL) pointing inside is refused with the field named."""
    strict = Settings(data_dir=settings.data_dir, database_url=settings.effective_database_url, admin_key="test-admin-key",
                      secret_key=",".join(settings.secret_keys), allow_private_urls=False)  # fmt: skip
    app = create_app(strict, store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as api:
        sec = await make_section(api, "strict")
        body = custom(fresh_provider)
        body["config"]["url"] = "http://localhost:8080/hook"
        r = await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "url"], r.text
        auth = {"type": "oauth2", "token_url": "http://169.254.169.254/token", "client_id": "cid", "client_secret": "s"}
        body = custom(fresh_provider, auth)
        body["config"]["url"] = "https://93.184.215.14/hook"
        r = await api.post("/api/v1/integrations", json=body, headers=sec.mgmt)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "auth", "token_url"], r.text
    assert fresh_provider.requests == []


async def test_rotate_secrets_command(
    api: httpx.AsyncClient, section: SectionKeys, fresh_provider: ProviderServer, settings: Settings, store: Store,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`rejoin rotate-secrets` re-encrypts under the first key of REJOIN_SECRET_KEY."""
    from runtime.cli import main

    r = await api.post("/api/v1/integrations", json=custom(fresh_provider), headers=section.mgmt)
    iid = r.json()["id"]
    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv("REJOIN_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("REJOIN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("REJOIN_SECRET_KEY", ",".join([new_key, *settings.secret_keys]))
    monkeypatch.setenv("REJOIN_ADMIN_KEY", "test-admin-key")
    try:
        main(["rotate-secrets"])
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["integrations"] >= 1
        with store.session() as s:
            row = s.get(Integration, iid)
            assert row is not None and row.secrets_enc and PASSWORD in SecretBox([new_key]).decrypt(row.secrets_enc)
    finally:
        rotate_all(store, SecretBox([*settings.secret_keys, new_key]))
