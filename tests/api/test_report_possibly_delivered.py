"""A send given up after an attempt whose outcome was unknown is stored failed and flagged
`possible_duplicate` (store/sends.py, `maybe_delivered`): the report shows it apart, as
`possibly_delivered` (a part of the failed sends), per variation, channel and step, in JSON, CSV and
HTML, from the counters as from the raw edges and after a rebuild. A send whose every attempt was
refused is a failure only."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from store import report_rollup
from store.engine import Store
from tests.activities.test_maybe_delivered_give_up import CUT, _journey_with_budget
from tests.helpers import SectionKeys
from tests.provider_server import ProviderServer, Reply

NAMES = ("send_requests", "failed_sends", "possibly_delivered")


def _counts(row: dict[str, Any]) -> tuple[int, ...]:
    return tuple(row["metrics"][m]["count"] for m in NAMES)


async def _report(api: httpx.AsyncClient, sec: SectionKeys, cid: str, **params: str) -> httpx.Response:
    r = await api.get(f"/api/v1/campaigns/{cid}/report", headers=sec.mgmt, params=params)
    assert r.status_code == 200, r.text
    return r


async def test_a_send_given_up_after_a_lost_answer_shows_as_possibly_delivered(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    budget = timedelta(minutes=5)
    cid, result = await _journey_with_budget(api, env, store, section, fresh_provider, budget, CUT, then=Reply(503))
    assert result.decisions[0].possible_duplicate, result
    now = datetime.now(UTC)
    whole_hours = {"from": (now - timedelta(days=30)).replace(minute=0, second=0, microsecond=0).isoformat(),
                   "to": (now + timedelta(days=30)).replace(minute=0, second=0, microsecond=0).isoformat()}  # fmt: skip
    for params in ({}, whole_hours):  # the default range's users are a raw edge; whole hours: counters
        body = (await _report(api, section, cid, **params)).json()
        assert (body["totals"]["failed_sends"], body["totals"]["possibly_delivered"]) == (1, 1), params
        [a] = body["variations"]
        assert _counts(a) == (1, 1, 1)
        assert [_counts(c) for c in body["channels"]] == [(1, 1, 1)]
        assert [_counts(st) for st in body["steps"]] == [(1, 1, 1)]
    with store.session() as s:
        report_rollup.rebuild(s, [cid])
    assert (await _report(api, section, cid, **whole_hours)).json()["totals"]["possibly_delivered"] == 1
    raw_csv = (await _report(api, section, cid, format="csv", **whole_hours)).content.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(raw_csv)))
    assert [(r["section"], r["failed_sends"], r["possibly_delivered"]) for r in rows] == [
        ("variation", "1", "1"), ("channel", "1", "1"), ("step", "1", "1"),
    ]  # fmt: skip
    page = await api.get(f"/api/v1/campaigns/{cid}/report.html", headers=section.mgmt, params=whole_hours)
    assert "<span>Possibly delivered</span><b>1</b>" in page.text
    assert "<th>Possibly Delivered<br><small>per user</small></th>" in page.text


async def test_a_send_whose_every_attempt_was_refused_is_a_failure_only(
    api: httpx.AsyncClient, env: WorkflowEnvironment, store: Store, section: SectionKeys,
    fresh_provider: ProviderServer,
) -> None:  # fmt: skip
    budget = timedelta(minutes=5)
    cid, _ = await _journey_with_budget(api, env, store, section, fresh_provider, budget, then=Reply(503))
    body = (await _report(api, section, cid)).json()
    assert (body["totals"]["failed_sends"], body["totals"]["possibly_delivered"]) == (1, 0)
