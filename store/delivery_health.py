"""A campaign's delivery health: its provider calls by channel and status, and why calls failed.

The report counts send requests (docs/reports.md); an operator also needs to see how many of
them failed, are still being retried, or may have reached the recipient twice, and the
provider's reasons, to tell a broken integration from a few bad addresses. Read from `Send`
over `ix_send_campaign` (campaign, created_at): test users' sends are real provider calls and
are counted, but always apart (`test_users`, `test_users_possible_duplicates`,
`test_user_failure_reasons`): a tester's deliberately bad address must not look like a broken
integration, nor hide one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlmodel import Session, col

from security.redact import mask
from store.tables import Journey, Send

# Failure reasons (the error, then the provider's body) are grouped on their start.
REASON_CHARS = 160
TOP_REASONS = 20
# Reasons read before masking and merging: masking can join groups that differed by an address or
# an id, so many distinct texts may make one reason (a vendor's request id made each failure its own).
_REASONS_READ = 2000
# What a vendor's error carries that differs per request, not per cause: UUIDs, hex tokens, long numbers.
_REQUEST_IDS = re.compile(
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|\b(?=[0-9a-f]*\d)[0-9a-f]{12,}\b|\d{6,}",
    re.IGNORECASE,
)


def delivery_summary(s: Session, campaign_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Counts of the campaign's sends created in [start, end) and its most frequent failure reasons,
    test users' sends apart from the real figures."""
    in_range = (
        col(Send.campaign_id) == campaign_id,
        col(Send.created_at) >= start,
        col(Send.created_at) < end,
    )
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "channels": _channel_counts(s, in_range),
        "failure_reasons": _failure_reasons(s, in_range, test=False),
        "test_user_failure_reasons": _failure_reasons(s, in_range, test=True),
    }


def _is_test() -> ColumnElement[bool]:
    """Whether a send is a test user's (its journey's flag; a send without a journey row is real)."""
    return func.coalesce(col(Journey.is_test), False)


def _channel_counts(s: Session, in_range: tuple[ColumnElement[bool], ...]) -> dict[str, dict[str, int]]:
    """Per channel: real sends by status and `possible_duplicates`; test users' sends in `test_users`
    and `test_users_possible_duplicates` only."""
    is_test = _is_test()
    rows = s.execute(
        select(col(Send.channel), col(Send.status), col(Send.possible_duplicate), is_test, func.count())
        .outerjoin(Journey, col(Journey.id) == col(Send.journey_id))
        .where(*in_range)
        .group_by(col(Send.channel), col(Send.status), col(Send.possible_duplicate), is_test)
    ).all()
    channels: dict[str, dict[str, int]] = {}
    for channel, status, duplicate, test, n in rows:
        counts = channels.setdefault(channel, defaultdict(int))
        counts["test_users" if test else status] += int(n)
        if duplicate:
            counts["test_users_possible_duplicates" if test else "possible_duplicates"] += int(n)
    return {ch: dict(sorted(c.items())) for ch, c in sorted(channels.items())}


def _failure_reasons(s: Session, in_range: tuple[ColumnElement[bool], ...], test: bool) -> list[dict[str, Any]]:
    """The most frequent reasons of the failed sends of test users (`test`) or of real users."""
    reason = func.substr(col(Send.provider_response), 1, REASON_CHARS)
    failed = s.execute(
        select(col(Send.channel), col(Send.provider_status), reason, func.count(), func.max(col(Send.updated_at)))
        .outerjoin(Journey, col(Journey.id) == col(Send.journey_id))
        .where(*in_range, col(Send.status) == "failed", _is_test() == test)
        .group_by(col(Send.channel), col(Send.provider_status), reason)
        .order_by(func.count().desc())
        .limit(_REASONS_READ)
    ).all()
    merged: dict[tuple[str, int | None, str], list[Any]] = {}
    for channel, provider_status, text, n, last in failed:
        key = (channel, provider_status, mask(_REQUEST_IDS.sub("…", text or "")))
        entry = merged.setdefault(key, [0, last])
        entry[0] += int(n)
        entry[1] = max(entry[1], last)
    top = sorted(merged.items(), key=lambda kv: -kv[1][0])[:TOP_REASONS]
    return [
        {"channel": ch, "provider_status": ps, "reason": text, "count": n, "last_at": last.isoformat()}
        for (ch, ps, text), (n, last) in top
    ]


# A failed send's reason as listed (`failed_sends`): masked, then cut to this. Read up to `_READ`
# characters: masking first means a cut never leaves half an address unmasked in what is shown.
FAILED_REASON_CHARS = 500
_FAILED_REASON_READ = 4000


def failed_sends(
    s: Session, campaign_id: str, start: datetime, end: datetime, limit: int, after: tuple[datetime, str] | None
) -> tuple[list[dict[str, Any]], tuple[datetime, str] | None]:
    """The campaign's failed sends created in [start, end), oldest first: whose journey and user, which
    step and channel, the provider's answer (masked) and when it failed; a page of `limit` after the
    (created_at, key) `after`, and the position to ask the next page from (None: no more).

    The counts and top reasons (`delivery_summary`) tell that sends fail; this tells whose, to find the
    journeys in Temporal (`workflow_id`) or the users (`user_id`). A journey whose every step failed
    ends `completed` there like one that sent, so the store is where failed sends are listed."""
    where: list[ColumnElement[bool]] = [
        col(Send.campaign_id) == campaign_id,
        col(Send.created_at) >= start,
        col(Send.created_at) < end,
        col(Send.status) == "failed",
    ]
    if after is not None:
        at, key = after
        where.append(or_(col(Send.created_at) > at, and_(col(Send.created_at) == at, col(Send.key) > key)))
    rows = s.execute(
        select(
            col(Send.key), col(Send.journey_id), col(Send.user_id), col(Send.variation_id), col(Send.step_index),
            col(Send.channel), col(Send.integration_id), col(Send.provider_status), col(Send.attempts),
            func.substr(col(Send.provider_response), 1, _FAILED_REASON_READ), col(Send.created_at),
            col(Send.updated_at), col(Journey.workflow_id), _is_test(),
        )
        .outerjoin(Journey, col(Journey.id) == col(Send.journey_id))
        .where(*where)
        .order_by(col(Send.created_at), col(Send.key))
        .limit(limit + 1)
    ).all()
    page = []
    for (key, journey_id, user_id, variation_id, step_index, channel, integration_id, provider_status, attempts,
         reason, created_at, updated_at, workflow_id, test) in rows[:limit]:  # fmt: skip
        page.append({
            "send_key": key, "journey_id": journey_id, "workflow_id": workflow_id, "user_id": user_id,
            "variation_id": variation_id, "step_index": step_index, "channel": channel,
            "integration_id": integration_id, "provider_status": provider_status, "attempts": attempts,
            "reason": mask(reason or "")[:FAILED_REASON_CHARS], "test_user": bool(test),
            "created_at": created_at.isoformat(), "failed_at": updated_at.isoformat(),
        })  # fmt: skip
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return page, ((last[10], last[0]) if last is not None else None)
