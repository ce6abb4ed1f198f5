"""A human click on an email send that has no counted open implies that open (as Mailchimp, Braze
and Iterable count it): readers who block images, or whose opens only Apple's privacy proxy
loaded, still click. So per send "opened" >= "clicked" and CTR <= 1, from the counters and the
raw path alike, and a real open after the implied one is no second open of the send."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete
from sqlmodel import col
from temporalio.testing import WorkflowEnvironment

from domain.reports import aggregate
from runtime.cli import main as cli_main
from settings import Settings
from store import report_rollup
from store import reports as q
from store.engine import Store
from store.report_tables import ReportRollup
from store.tracking_tables import TrackingHit
from tests.helpers import SectionKeys, create_campaign, step
from tests.reports_world import World
from tests.tracking.test_tracking_api import HUMAN, hits, path
from tests.tracking.test_unique_opens import MPP, _figures, _reports, _sent_email

T0 = datetime(2026, 5, 1, tzinfo=UTC)
WINDOW = timedelta(days=7)
SPEC = {
    "name": "Implied opens", "type": "cart_abandonment", "channel_priority": ["email", "sms"],
    "settings": {"primary_metric": "ctr", "attribution_window": "P7D"},
    "variations": [{"id": "a", "name": "A", "share": 100, "steps": [step("S1")]}],
}  # fmt: skip


def _links(body: dict[str, Any]) -> tuple[str, str]:
    """The pixel's and the tracked link's paths of a sent email."""
    html = body["html"]
    return path(html.split('src="')[1].split('"')[0]), path(html.split('href="')[1].split('"')[0])


def _hits(store: Store, send_key: str) -> list[tuple[str, str, bool, bool]]:
    return [(h.kind, h.source, h.bot, h.first_of_send) for h in hits(store, send_key)]


async def test_a_click_without_an_open_implies_one_and_a_later_open_is_no_second(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """Apple's proxy prefetches the pixel (a bot), the reader clicks: the click implies the open
    (a hit of source `implied`, the send's first open). A real open afterwards and a second click
    add to the totals only: one open, one click, CTR 1.0 (before: no open, CTR null)."""
    cid, send_key, body = await _sent_email(api, env, store, section)
    pixel, link = _links(body)
    assert (await api.get(pixel, headers=MPP)).status_code == 200
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    assert _hits(store, send_key) == [
        ("impression", "pixel", True, False),
        ("click", "link", False, True),
        ("impression", "implied", False, True),
    ]
    for report in _reports(store, cid):
        assert _figures(report) == (1, 1, 1, 1, 1.0, 1.0)

    assert (await api.get(pixel, headers=HUMAN)).status_code == 200  # the reader opens it again, images on
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    assert _hits(store, send_key)[3:] == [("impression", "pixel", False, False), ("click", "link", False, False)]
    for report in _reports(store, cid):
        assert _figures(report) == (1, 2, 1, 2, 1.0, 1.0)
    with store.session() as s:  # a rebuild from the raw hits agrees with the live counters
        report_rollup.rebuild(s, [cid])
    for report in _reports(store, cid):
        assert _figures(report) == (1, 2, 1, 2, 1.0, 1.0)


async def test_an_open_before_the_click_is_the_open_and_nothing_is_implied(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    cid, send_key, body = await _sent_email(api, env, store, section)
    pixel, link = _links(body)
    assert (await api.get(pixel, headers=HUMAN)).status_code == 200
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    assert _hits(store, send_key) == [("impression", "pixel", False, True), ("click", "link", False, True)]
    for report in _reports(store, cid):
        assert _figures(report) == (1, 1, 1, 1, 1.0, 1.0)


async def test_a_bot_click_implies_nothing(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """A link scanner's HEAD is a bot click: no click, so no open either."""
    cid, send_key, body = await _sent_email(api, env, store, section)
    _, link = _links(body)
    assert (await api.head(link, headers=HUMAN)).status_code == 302
    assert _hits(store, send_key) == [("click", "link", True, False)]
    for report in _reports(store, cid):
        assert _figures(report) == (0, 0, 0, 0, None, None)


async def test_a_click_racing_a_real_open_records_one_open(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys, monkeypatch: Any
) -> None:
    """A click recorded while the send's real open commits may find no open yet: its implied open
    then collides with the real one on the unique index, and the click is recorded again (now
    seeing the open), so the send keeps one open."""
    cid, send_key, body = await _sent_email(api, env, store, section)
    pixel, link = _links(body)
    assert (await api.get(pixel, headers=HUMAN)).status_code == 200
    real, missed = report_rollup._send_has_first, list[TrackingHit]()

    def racing(s: Any, hit: TrackingHit) -> bool:  # the click's first look misses the committed open once
        if hit.kind == "impression" and not missed:
            missed.append(hit)
            return False
        return real(s, hit)

    monkeypatch.setattr(report_rollup, "_send_has_first", racing)
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    assert missed and _hits(store, send_key) == [("impression", "pixel", False, True), ("click", "link", False, True)]
    for report in _reports(store, cid):
        assert _figures(report) == (1, 1, 1, 1, 1.0, 1.0)


def _ctr_view(store: Store, section_id: str, cid: str, start: datetime, end: datetime) -> list[tuple[Any, ...]]:
    """(email opens, email clicks, CTR) of variation a from the counters with raw edges and from
    the raw path: they must agree."""
    out = []
    with store.session() as s:
        for data in (q.load(s, section_id, cid, start, end, WINDOW), q.load_raw(s, section_id, cid, start, end)):
            b = aggregate(data, WINDOW).variations["a"]
            ctr = b.email_clicks / b.email_impressions if b.email_impressions else None
            out.append((b.email_impressions, b.email_clicks, ctr))
    assert out[0] == out[1], out
    return out


async def test_ctr_never_exceeds_one_over_whole_and_partial_hours(
    api: httpx.AsyncClient, store: Store, section: SectionKeys
) -> None:
    """Two email sends clicked, one of them opened first (before the fix: 2 clicks / 1 open, CTR
    2.0); push and SMS have no implied opens: a push click without `PN_IMP` stays unopened and an
    SMS has no opens at all. Counters + raw edges == raw path, whole hours and hours cut inside."""
    cid = await create_campaign(api, section, SPEC, activate=False)
    w = World(store, section.id, cid)

    def h(hours: float) -> datetime:
        return T0 + timedelta(hours=hours)

    opened, blocked, pushed, texted = (w.user("a", h(n + 0.5)) for n in range(4))
    for uid in (opened, blocked):
        w.send(uid, "a", 0, "email", h(5))
    w.hit(opened, "a", "impression", h(6))
    w.hit(opened, "a", "click", h(6.1))
    w.hit(blocked, "a", "click", h(6.2))  # images blocked: the click is all there is
    w.send(pushed, "a", 0, "push", h(5))
    w.hit(pushed, "a", "click", h(6), channel="push")
    w.send(texted, "a", 0, "sms", h(5))
    w.hit(texted, "a", "click", h(6), channel="sms")

    def check() -> None:
        for start, end in ((h(0), h(24)), (h(0.75), h(1.75)), (h(-1), h(0.9))):
            _ctr_view(store, section.id, cid, start, end)
        assert _ctr_view(store, section.id, cid, h(0), h(24))[0] == (2, 2, 1.0)
        assert _ctr_view(store, section.id, cid, h(0.25), h(23.5))[0] == (2, 2, 1.0)  # both edges inside an hour
        assert _ctr_view(store, section.id, cid, h(1.25), h(1.75))[0] == (1, 1, 1.0)  # only `blocked`, raw path

    check()
    w.hit(blocked, "a", "impression", h(7))  # opened again later with images: no second open
    check()
    with store.session() as s:
        data = q.load(s, section.id, cid, h(0), h(24), WINDOW)
        b = aggregate(data, WINDOW).channels
    push, sms = (b[("a", ch)].table()["metrics"] for ch in ("push", "sms"))
    assert [m[k]["count"] for m in (push, sms) for k in ("impressions", "clicks")] == [0, 1, 0, 1]


async def test_start_up_implies_the_opens_of_sends_clicked_before(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys
) -> None:
    """A database from before: a send clicked without an open has no implied open and its counters
    none. The once-per-database start-up migration adds the implied open and rebuilds the counters."""
    cid, send_key, body = await _sent_email(api, env, store, section)
    _, link = _links(body)
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    with store.session() as s:  # as the previous version stored them
        s.execute(delete(TrackingHit).where(col(TrackingHit.source) == report_rollup.IMPLIED))
        s.execute(delete(ReportRollup).where(col(ReportRollup.metric) == report_rollup.IMPLIED_MARKER))
        report_rollup.rebuild(s, [cid])
    for report in _reports(store, cid):
        assert _figures(report) == (0, 0, 1, 1, None, None)

    with store.session() as s:
        assert report_rollup.migrate_reports(s) >= 1
    assert _hits(store, send_key) == [("click", "link", False, True), ("impression", "implied", False, True)]
    for report in _reports(store, cid):
        assert _figures(report) == (1, 1, 1, 1, 1.0, 1.0)
    with store.session() as s:  # once per database
        assert report_rollup.migrate_reports(s) == 0
    assert len(hits(store, send_key)) == 2


async def test_rebuild_reports_implies_the_opens_an_older_process_recorded_without(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys, settings: Settings,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A click a process of the previous version recorded after the start-up migration ran (a
    rolling upgrade) has no implied open: `rejoin rebuild-reports` adds it before it rebuilds."""
    cid, send_key, body = await _sent_email(api, env, store, section)
    _, link = _links(body)
    assert (await api.get(link, headers=HUMAN)).status_code == 302
    with store.session() as s:  # as the old process stored it; the migration's marker stays
        s.execute(delete(TrackingHit).where(col(TrackingHit.source) == report_rollup.IMPLIED))
        report_rollup.rebuild(s, [cid])
    monkeypatch.setenv("REJOIN_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("REJOIN_DATA_DIR", str(settings.data_dir))
    cli_main(["rebuild-reports", cid])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["campaigns_rebuilt"] == 1 and out["opens_implied"] >= 1  # other tests' old-style clicks too
    assert _hits(store, send_key) == [("click", "link", False, True), ("impression", "implied", False, True)]
    for report in _reports(store, cid):
        assert _figures(report) == (1, 1, 1, 1, 1.0, 1.0)
    cli_main(["rebuild-reports", cid])  # again: nothing more to imply
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["opens_implied"] == 0
