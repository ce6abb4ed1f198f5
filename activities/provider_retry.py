"""A provider's transient answer (429, 5xx, a timeout, a dropped connection) as the activity
error Temporal retries.

Such answers are expected: vendors throttle and have outages, and the send row already records
each one (`retrying`, or `in_flight` when the outcome is unknown). So the attempt is logged as
one line here and the error is marked BENIGN, which makes the SDK log it at DEBUG instead of a
WARNING with a full traceback per attempt (a vendor outage filled a soak run's worker log with
thousands of identical tracebacks) and leaves it out of the SDK's failure metrics. A send that
fails for good is logged where it is recorded, once, at WARNING, when that record commits
(`log_failed`: the send key, the answer, the masked reason; journeys' `Delivery._fail_in` and
`JourneyActivities._give_up`, batched runs' `_record_in` and `_close_send`).

An unknown outcome (a timeout, a connection cut after sending: `ProviderError.outcome_unknown`)
is retried like a 503 only where repeating is safe: the vendor de-duplicates on our idempotency
key. A vendor that does not (Twilio, SendGrid, custom HTTP...) may have delivered the message on
every such attempt, so a send gets one more try after its first unknown outcome and no more
(`unknown_again`): a second one ends it `failed`, flagged `possible_duplicate`, its cap slot kept
and no fallback (`unknown_twice`). A vendor that always answers after the read timeout had a
send called again for the whole delivery budget (9 identical SMS in 10 minutes in a trial, ~40
over 6 h), each one delivered. The marker of the earlier unknown outcome is the send row's
`possible_duplicate` as this attempt began: set when an attempt's outcome was unknown, and when
an attempt finds the send left `in_flight` by one whose worker died after preparing its call.

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

from sqlalchemy import event
from sqlmodel import Session
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.activity_clock import budget_left
from providers.base import Provider, ProviderError
from security.redact import mask
from store.engine import Store
from store.tables import Integration

log = logging.getLogger(__name__)

# What a final failure's log line keeps of its reason (the send row keeps 2,000 characters).
LOGGED_REASON_CHARS = 300


def answer_of(err: ProviderError) -> str:
    """How a log line names a provider's answer: its status, else `timeout` / `connection error`."""
    return str(err.status) if err.status is not None else err.message.split(":", 1)[0]


def unknown_again(err: ProviderError, provider: Provider, flagged: bool) -> bool:
    """Whether this failure ends the send instead of being retried: its outcome is unknown, an
    earlier attempt's was too (`flagged`: the send's `possible_duplicate` as this attempt began),
    and the vendor does not de-duplicate on the key, so each repeat may deliver the message again."""
    return err.retryable and err.outcome_unknown and flagged and not provider.honours_idempotency_key


def unknown_twice(err: ProviderError, kind: str) -> str:
    """The recorded reason of a send ended by `unknown_again` (led by what tells it from others:
    kept reasons are cut at 200 characters)."""
    who = "the endpoint is not known to de-duplicate" if kind == "custom_http" else f"{kind} does not de-duplicate"
    return (
        f"outcome unknown twice ({err.message[:120]}): not retried again, {who}; "
        "it may have delivered the message, check its log"
    )


def log_failed(
    s: Session, send: str, reason: str, *, status: int | None = None, answer: str | None = None
) -> None:
    """Log `send` failed for good, one WARNING line, when `s` commits the record (a rolled-back
    record logs nothing; its retry records and logs it). The line names the provider's answer:
    `answer` (`answer_of`: the status, or `timeout` / `connection error`), else the last `status`,
    else none. The reason is masked (e-mail addresses, phone numbers) on top of what masked it when
    it was made (the integration's secrets: `providers/base.py::Redactor`); the recipient's address
    is never put in it."""
    said = answer or (str(status) if status is not None else "no provider answer")
    masked = mask(reason)[:LOGGED_REASON_CHARS]
    event.listen(
        s, "after_commit", lambda _s: log.warning("%s: send failed for good (%s): %s", send, said, masked), once=True
    )


def retry_later(err: ProviderError, send: str) -> ApplicationError:
    """The error to raise for a retryable provider failure of `send` (a send key or a batch)."""
    answer = answer_of(err)
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
