"""Privacy: PII masked in logs, raw events deleted after the retention period."""

from __future__ import annotations

import base64
import collections
import json
import logging
import re
from datetime import timedelta

import httpx
import pytest
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment

from providers.base import classify_http, kept_answer
from runtime.cli import main as cli_main
from security.redact import install_log_redaction, mask
from settings import Settings
from store.engine import Store
from store.retention import purge_events, retention_loop
from store.tables import Decision, Event, Send, now_utc
from tests.helpers import (
    SectionKeys,
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    email_for,
    journey_handle,
    journey_result,
    reachable_user,
)
from tests.provider_server import ProviderServer, Reply


def test_emails_and_phones_are_masked_in_any_log_record(caplog: pytest.LogCaptureFixture) -> None:
    """Any logger's record with an e-mail or phone number (in msg or args) is masked before any handler sees it."""
    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("delivering to %s / %s", "Jane.Doe@Example.com", "+33 6 12 34 56 78")
    text = caplog.records[-1].getMessage()
    assert "Jane.Doe" not in text and "12 34 56" not in text, text
    assert "J***@Example.com" in text
    assert mask("usr_6e6bc3b367b87492f608 journey/sec_1/cmp_2 at 2026-11-23 took 1234 ms") == (
        "usr_6e6bc3b367b87492f608 journey/sec_1/cmp_2 at 2026-11-23 took 1234 ms"
    )
    # IPv4 addresses (a refused URL's, a client's) stay readable; dotted phone numbers do not.
    assert mask("refusing to call h: not a public address (169.254.169.254), client 10.20.30.40:5") == (
        "refusing to call h: not a public address (169.254.169.254), client 10.20.30.40:5"
    )
    assert mask("call 06.12.34.56.78 or 415.555.0123") == "call 06.******.78 or 415******123"


def test_masking_keeps_formatters_that_read_args_working(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn's access log formats from `record.args` (client, method, path, version, status): it
    still formats, with the address in the path masked; numbers long enough to be phone numbers
    and objects go through format-then-mask instead."""
    from uvicorn.logging import AccessFormatter

    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/u/jane@example.com", "1.1", 200
        )
        access = caplog.records[-1]
        logging.getLogger("some.library").info("call %d about %s", 33612345678, ValueError("jane@example.com"))
        other = caplog.records[-1]
    line = AccessFormatter(fmt='%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(access)
    assert line == '127.0.0.1:5000 - "GET /u/j***@example.com HTTP/1.1" 200 OK', line
    assert other.getMessage() == "call 336******678 about j***@example.com", other.getMessage()


def test_provider_errors_keep_their_text_masked() -> None:
    """A classified provider error masks its message and kept body at creation (they travel on to
    the send row, the decision trace and Temporal), while the adapter still sees the raw answer."""
    raw = '{"to": "+14155550123", "message": "jane.doe@example.com is on the blocklist"}'
    error = classify_http(400, raw, {})
    assert error is not None and not error.retryable
    for text in (error.message, error.body, str(error)):
        assert "jane.doe" not in text and "4155550123" not in text, text
        assert "j***@example.com" in text and "+14******123" in text, text
    assert kept_answer("x" * 1990 + " jane.doe@example.com") == "x" * 1990 + " j***@exam"  # masked, then cut
    # An address straddling the cut of a long body is recognised whole, not left half visible.
    assert kept_answer("x" * 1995 + " jane.doe@example.com" + "y" * 50_000) == "x" * 1995 + " j***"
    long_error = classify_http(500, "z" * 1995 + " jane.doe@example.com" + "z" * 50_000, {})
    assert long_error is not None and long_error.body == "z" * 1995 + " j***"


async def test_a_journey_logs_no_recipient_address(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Ingestion, delivery retries and provider errors (which echo the request) never log the user's e-mail."""
    fresh_provider.handler("/echo", lambda r: Reply(503, r.body.decode()))  # a vendor echoing our payload
    fresh_provider.script("/echo", Reply(503, "busy"))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url("/echo")})
    cid = await create_campaign(api, section, cart_campaign())
    with caplog.at_level(logging.DEBUG):
        dyid, uid = await reachable_user(api, section)
        fresh_provider.script("/echo", Reply(503, json.dumps({"to": email_for(dyid)})), Reply(200))
        await collect(api, section, dyid, add_to_cart("sku-1"))
        result = await journey_result(env.client, section, cid, uid)
    assert result.sent == 1
    assert any("503" in r.getMessage() for r in caplog.records)  # the echoing error was logged...
    leaked = [r.getMessage() for r in caplog.records if email_for(dyid) in r.getMessage()]
    assert leaked == []  # ...masked
    assert email_for(dyid) not in caplog.text  # tracebacks included


def _event(store: Store, section_id: str, age: timedelta, dispatched: bool = True) -> str:
    import secrets

    eid = "evt_" + secrets.token_hex(12)
    with store.session() as s:
        s.add(Event(id=eid, section_id=section_id, user_id="usr_x", kind="custom", name="x", data={},
                    received_at=now_utc() - age, dispatched=dispatched))  # fmt: skip
    return eid


def _exists(store: Store, eid: str) -> bool:
    with store.session() as s:
        return s.exec(select(Event).where(Event.id == eid)).first() is not None


def test_events_older_than_retention_are_deleted(store: Store, section: SectionKeys) -> None:
    """purge_events deletes dispatched events before the cutoff, keeps newer ones and undispatched ones."""
    old = [_event(store, section.id, timedelta(days=400)) for _ in range(7)]
    pending = _event(store, section.id, timedelta(days=400), dispatched=False)
    young = _event(store, section.id, timedelta(days=10))
    assert purge_events(store, now_utc() - timedelta(days=395), batch=3) >= 7
    assert not any(_exists(store, e) for e in old)
    assert _exists(store, pending) and _exists(store, young)


def test_purge_events_command_uses_configured_retention(
    store: Store, settings: Settings, section: SectionKeys, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`rejoin purge-events` reads REJOIN_EVENT_RETENTION and reports how many events it deleted."""
    old = _event(store, section.id, timedelta(days=40))
    young = _event(store, section.id, timedelta(days=20))
    monkeypatch.setenv("REJOIN_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("REJOIN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("REJOIN_EVENT_RETENTION", "P30D")
    cli_main(["purge-events"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["deleted_events"] >= 1 and out["retention_days"] == 30
    assert not _exists(store, old) and _exists(store, young)


def test_purge_events_with_retention_off_or_a_bad_override_deletes_nothing(
    store: Store, settings: Settings, section: SectionKeys, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """REJOIN_EVENT_RETENTION=PT0S switches retention off, so the command deletes nothing (it read a
    0-day retention and deleted every event); `--days` of 0 or less is refused, not a cutoff at or
    after now."""
    old = _event(store, section.id, timedelta(days=400))
    monkeypatch.setenv("REJOIN_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("REJOIN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("REJOIN_EVENT_RETENTION", "PT0S")
    cli_main(["purge-events"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"deleted_events": 0, "retention": "off"}
    for days in ("0", "-1"):
        with pytest.raises(SystemExit, match="--days must be positive"):
            cli_main(["purge-events", "--days", days])
    assert _exists(store, old)


async def test_retention_loop_purges_in_the_background(store: Store, section: SectionKeys) -> None:
    """The API's retention task deletes expired events on its own, without anyone running the command."""
    import asyncio

    old = _event(store, section.id, timedelta(days=500))
    young = _event(store, section.id, timedelta(days=1))
    task = asyncio.create_task(retention_loop(store, timedelta(days=395), every=timedelta(seconds=0.05)))
    try:
        for _ in range(100):
            if not _exists(store, old):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert not _exists(store, old) and _exists(store, young)


async def test_journey_history_carries_no_address(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys
) -> None:
    """A journey's whole Temporal history (inputs, signals, activity payloads, results) holds ids, never the e-mail."""
    await add_integration(api, section)
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, uid)).sent == 1
    history = (await journey_handle(env.client, section, cid, uid).fetch_history()).to_json()
    decoded = " ".join(base64.b64decode(b).decode("utf-8", "replace") for b in re.findall(r'"data": "([^"]+)"', history))
    assert uid in decoded  # the payloads are there, and they name the user by id...
    leaks = [m for m in re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", decoded + history) if "example" in m]
    assert email_for(dyid) not in decoded + history and leaks == []  # ...never by address


def test_committed_replay_histories_carry_no_address() -> None:
    """The histories committed under tests/histories/ contain no e-mail address."""
    from pathlib import Path

    files = list((Path(__file__).resolve().parent.parent / "histories").glob("*.json"))
    assert files and not [f.name for f in files if "@example.com" in f.read_text()]


async def test_provider_answers_that_echo_the_address_are_kept_masked(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """Vendors echo the request in their answers (Twilio's message resource repeats `to`, error
    bodies quote the address they refused). What Rejoin keeps of an answer (the send's provider
    response, the decision trace, the journeys API, the retried attempt's failure in the Temporal
    history) has the address masked."""
    statuses = collections.deque([503, 200, 400])  # first user: busy, then accepted; second: refused
    fresh_provider.handler("/echo", lambda r: Reply(statuses.popleft(), r.body.decode()))
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url("/echo")})
    cid = await create_campaign(api, section, cart_campaign())
    accepted_dyid, accepted_uid = await reachable_user(api, section)
    await collect(api, section, accepted_dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, accepted_uid)).sent == 1
    refused_dyid, refused_uid = await reachable_user(api, section)
    await collect(api, section, refused_dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, refused_uid)).sent == 0
    assert not statuses and all(email_for(d) in r.body.decode() for d, r in
                                zip([accepted_dyid, accepted_dyid, refused_dyid], fresh_provider.to("/echo")))

    kept: list[str] = []
    with store.session() as s:
        sends = s.exec(select(Send).where(col(Send.user_id).in_([accepted_uid, refused_uid]))).all()
        assert sorted(x.status for x in sends) == ["accepted", "failed"]
        kept += [x.provider_response or "" for x in sends]
        decisions = s.exec(select(Decision).where(col(Decision.user_id).in_([accepted_uid, refused_uid]))).all()
        kept += [json.dumps([d.reason, d.detail]) for d in decisions]
    for dyid, uid in ((accepted_dyid, accepted_uid), (refused_dyid, refused_uid)):
        journeys = await api.get(f"/api/v1/users/{dyid}/journeys", headers=section.mgmt)
        assert journeys.status_code == 200, journeys.text
        kept.append(journeys.text)
        for j in journeys.json():
            detail = await api.get(f"/api/v1/journeys/{j['id']}", headers=section.mgmt)
            kept.append(detail.text)
        history = (await journey_handle(env.client, section, cid, uid).fetch_history()).to_json()
        kept.append(history)
        kept += [base64.b64decode(b).decode("utf-8", "replace") for b in re.findall(r'"data": "([^"]+)"', history)]
    text = "\n".join(kept)
    assert "503" in text and "400" in text  # the answers are kept...
    assert "***@example.com" in text
    assert not [d for d in (accepted_dyid, refused_dyid) if email_for(d) in text]  # ...masked


async def test_a_refused_token_is_recorded_with_the_vendor_text_masked(
    api: httpx.AsyncClient, env: WorkflowEnvironment, section: SectionKeys, fresh_provider: ProviderServer,
    store: Store,
) -> None:  # fmt: skip
    """A token endpoint that later refuses the credentials fails the send as a configuration error:
    the OAuth2 error code stays readable, the vendor's description is quoted masked."""
    token_calls: list[int] = []

    def token(_: object) -> Reply:
        token_calls.append(1)
        if len(token_calls) == 1:  # the check when the integration is saved
            return Reply(200, {"access_token": "tok", "token_type": "Bearer", "expires_in": 3600})
        return Reply(401, {"error": "invalid_client", "error_description": "owner jane.doe@example.com is suspended"})

    fresh_provider.handler("/oauth/token", token)
    auth = {"type": "oauth2", "token_url": fresh_provider.url("/oauth/token"), "client_id": "cid", "client_secret": "s"}
    await add_integration(api, section, kind="custom_http", config={"url": fresh_provider.url("/send"), "auth": auth})
    cid = await create_campaign(api, section, cart_campaign())
    dyid, uid = await reachable_user(api, section)
    await collect(api, section, dyid, add_to_cart("sku-1"))
    assert (await journey_result(env.client, section, cid, uid)).sent == 0
    assert len(token_calls) >= 2 and not fresh_provider.to("/send")
    with store.session() as s:
        send = s.exec(select(Send).where(Send.user_id == uid)).one()
    reason = send.provider_response or ""
    assert send.status == "failed" and "configuration: token endpoint refused the credentials (401)" in reason, reason
    assert "invalid_client: owner j***@example.com is suspended" in reason and "jane.doe" not in reason, reason
