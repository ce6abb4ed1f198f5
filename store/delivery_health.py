"""A campaign's delivery health: its provider calls by channel and status, and why calls failed.

The report counts send requests (docs/reports.md); an operator also needs to see how many of
them failed, are still being retried, or may have reached the recipient twice, and the
provider's reasons, to tell a broken integration from a few bad addresses. Read from `Send`
over `ix_send_campaign` (campaign, created_at): test users' sends are real provider calls and
are counted, marked apart.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from security.redact import mask
from store.tables import Journey, Send

# Failure reasons (the error, then the provider's body) are grouped on their start.
REASON_CHARS = 160
TOP_REASONS = 20
# Reasons read before masking and merging: masking can join groups that differed by an address.
_REASONS_READ = 200


def delivery_summary(s: Session, campaign_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Counts of the campaign's sends created in [start, end) and its most frequent failure reasons."""
    in_range = (
        col(Send.campaign_id) == campaign_id,
        col(Send.created_at) >= start,
        col(Send.created_at) < end,
    )
    is_test = func.coalesce(col(Journey.is_test), False)
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
            counts["possible_duplicates"] += int(n)
    reason = func.substr(col(Send.provider_response), 1, REASON_CHARS)
    failed = s.execute(
        select(col(Send.channel), col(Send.provider_status), reason, func.count(), func.max(col(Send.updated_at)))
        .where(*in_range, col(Send.status) == "failed")
        .group_by(col(Send.channel), col(Send.provider_status), reason)
        .order_by(func.count().desc())
        .limit(_REASONS_READ)
    ).all()
    merged: dict[tuple[str, int | None, str], list[Any]] = {}
    for channel, provider_status, text, n, last in failed:
        key = (channel, provider_status, mask(text or ""))
        entry = merged.setdefault(key, [0, last])
        entry[0] += int(n)
        entry[1] = max(entry[1], last)
    top = sorted(merged.items(), key=lambda kv: -kv[1][0])[:TOP_REASONS]
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "channels": {ch: dict(sorted(c.items())) for ch, c in sorted(channels.items())},
        "failure_reasons": [
            {"channel": ch, "provider_status": ps, "reason": text, "count": n, "last_at": last.isoformat()}
            for (ch, ps, text), (n, last) in top
        ],
    }
