"""A provider's transient answer (429, 5xx, a timeout, a dropped connection) as the activity
error Temporal retries.

Such answers are expected: vendors throttle and have outages, and the send row already records
each one (`retrying`, or `in_flight` when the outcome is unknown). So the attempt is logged as
one line here and the error is marked BENIGN, which makes the SDK log it at DEBUG instead of a
WARNING with a full traceback per attempt (a vendor outage filled a soak run's worker log with
thousands of identical tracebacks) and leaves it out of the SDK's failure metrics. A send that
fails for good is still logged where it is recorded.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from providers.base import ProviderError

log = logging.getLogger(__name__)


def retry_later(err: ProviderError, send: str) -> ApplicationError:
    """The error to raise for a retryable provider failure of `send` (a send key or a batch)."""
    answer = str(err.status) if err.status is not None else err.message.split(":", 1)[0]
    after = f" after {err.retry_after:g} s (Retry-After)" if err.retry_after else ""
    log.info("%s: provider failed (%s); Temporal retries it%s", send, answer, after)
    return ApplicationError(
        err.message,
        type="RateLimited" if err.status == 429 else "ProviderUnavailable",
        next_retry_delay=timedelta(seconds=err.retry_after) if err.retry_after else None,
        category=ApplicationErrorCategory.BENIGN,
    )
