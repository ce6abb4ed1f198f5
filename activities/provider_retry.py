"""A provider's transient answer (429, 5xx, a timeout, a dropped connection) as the activity
error Temporal retries.

Such answers are expected: vendors throttle and have outages, and the send row already records
each one (`retrying`, or `in_flight` when the outcome is unknown). So the attempt is logged as
one line here and the error is marked BENIGN, which makes the SDK log it at DEBUG instead of a
WARNING with a full traceback per attempt (a vendor outage filled a soak run's worker log with
thousands of identical tracebacks) and leaves it out of the SDK's failure metrics. A send that
fails for good is still logged where it is recorded.

A Retry-After that reaches past what is left of the delivery budget (the activity's
schedule-to-close timeout) cannot be honoured: Temporal would give the step up at once, with the
vendor's last answer as the only reason. So the error says so itself and is not retried, and the
give-up reason and the log line tell the real cause. (`parse_retry_after` already sets aside an
implausible value, over an hour, so the back-off applies to those.)

The error's text is the `ProviderError`'s, masked when it was made (the integration's secrets,
addresses: `providers/base.py::Redactor`), and masked once more here with the same integration's
redactor (`err.redactor`), since it goes into the Temporal history, which the Temporal UI shows.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.activity_clock import budget_left
from providers.base import ProviderError
from store.engine import Store
from store.tables import Integration

log = logging.getLogger(__name__)


def retry_later(err: ProviderError, send: str) -> ApplicationError:
    """The error to raise for a retryable provider failure of `send` (a send key or a batch)."""
    answer = str(err.status) if err.status is not None else err.message.split(":", 1)[0]
    message = err.redactor.redact(err.message)
    error_type = "RateLimited" if err.status == 429 else "ProviderUnavailable"
    wait = err.retry_after if err.retry_after is not None and math.isfinite(err.retry_after) else None
    left = budget_left()
    if wait and left is not None and wait > left:
        log.info(
            "%s: provider failed (%s); Retry-After %g s exceeds the remaining delivery budget (%.0f s): gives up",
            send, answer, wait, max(0.0, left),
        )  # fmt: skip
        return ApplicationError(
            f"Retry-After {wait:g} s exceeds the remaining delivery budget ({max(0.0, left):.0f} s): {message}",
            type=error_type,
            non_retryable=True,
        )
    after = f" after {wait:g} s (Retry-After)" if wait else ""
    log.info("%s: provider failed (%s); Temporal retries it%s", send, answer, after)
    return ApplicationError(
        message,
        type=error_type,
        next_retry_delay=timedelta(seconds=wait) if wait else None,
        category=ApplicationErrorCategory.BENIGN,
    )


def refused_replaced_credentials(store: Store, err: ProviderError, integration_id: str, read_at: datetime) -> bool:
    """A 401/403 to a call made with credentials the integration has replaced since they were read
    (`read_at`: the integration's `updated_at` then): the operator rotated the key (the new one saved,
    the old one revoked at the vendor) while the call was under way. Such a refusal is retried with
    the new credentials, not failed for good, by journeys (activities/delivery.py) and batched runs
    (activities/broadcast.py) alike: the rotation lost every message caught mid-call (a trial)."""
    if err.status not in (401, 403):
        return False
    with store.session() as s:
        integration = s.get(Integration, integration_id)
        return integration is not None and integration.updated_at > read_at
