"""When a push send whose recipient the provider reports gone goes to the user's next live opt-in.

One rule for both send paths: a triggered journey's step (activities/delivery.py `Delivery._gone`)
and a batched run's recipient (activities/broadcast.py `BroadcastActivities._gone`). The gone
opt-in is opted out either way; the send (one send key) is handed to the user's newest opt-in still
live on the same push channel, within bounds, or fails as any permanent refusal does.
"""

from __future__ import annotations

from activities.activity_clock import attempt_share_left
from providers.base import Provider
from store import sends
from store.reachability import PUSH_CHANNELS
from store.tables import Send

# At most this many further recipients per send and attempt (a batch, for a batched run): a user
# keeps up to 20 subscriptions per push channel, and each call waits for the provider.
MAX_GONE_RECIPIENTS = 3


def half_the_attempt_left() -> bool:
    """Whether at least half of this activity attempt's start-to-close time is left (True outside
    an activity, or without a timeout): another provider call for the next recipient should end
    inside the attempt, not be cancelled by Temporal mid-call (its retry would be flagged)."""
    share = attempt_share_left()
    return share is None or share > 0.5


def may_try_next(gone: int) -> bool:
    """After the `gone`-th recipient of a send reported gone in this attempt: whether the bounds
    leave room for one more."""
    return gone <= MAX_GONE_RECIPIENTS and half_the_attempt_left()


def may_hand_over(channel: str, provider: Provider, send: Send | None) -> bool:
    """Whether this send may go on to the user's next opt-in on its channel (the caller has just
    opted the gone one out, in the transaction that reads `send`)."""
    return (
        channel in PUSH_CHANNELS
        # The same send key goes to the next recipient: only where the vendor does not de-duplicate
        # by it (every push vendor), or it would drop the message as a repeat.
        and not provider.honours_idempotency_key
        and send is not None
        # An earlier attempt whose outcome was unknown may have reached the gone recipient: no second.
        and not sends.maybe_delivered(send, attempt_running=True)
    )
