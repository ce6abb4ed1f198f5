"""A recipient's own unsubscribe (the one-click link of an email): opt the user out of email.

The same opt-out the userdata API records (`OptIn.opted_in = False`), found through
`reach`, so it is exactly the consent that made the user reachable that is withdrawn, whatever
identifier type the section's email integration reads. A user reachable through a synced
subscriber list gets an opt-out row of the listed identifier, newer than the list, which
therefore no longer opts them in (store/subscribers.py::effective_opt_in). A later opt-in
through the API or the user's next subscription opts in again as usual.
"""

from __future__ import annotations

import logging

from sqlmodel import Session

from store.locks import lock_key, opt_in_lock_key
from store.reachability import find_opt_in, reach
from store.tables import OptIn, now_utc

log = logging.getLogger(__name__)

SOURCE = "unsubscribe"  # OptIn.source of these opt-outs: the recipient's own, from an email
CHANNEL = "email"
# A user has a handful of email identifiers at most; the bound only stops a loop that a row
# which would not stay opted out (a database quirk) could otherwise make endless.
MAX_ROWS = 50


def unsubscribe_email(s: Session, section_id: str, user_id: str) -> int:
    """Opt `user_id` out of email in the section; the number of opt-ins withdrawn (0: already out)."""
    withdrawn = 0
    while withdrawn < MAX_ROWS:
        held = reach(s, section_id, user_id, [CHANNEL]).opt_ins.get(CHANNEL)
        if held is None:
            break
        row = held if held.id is not None else _stored(s, section_id, held)
        row.opted_in, row.source, row.updated_at = False, SOURCE, now_utc()
        s.add(row)
        s.flush()  # the next `reach` must see it out
        withdrawn += 1
    if withdrawn:
        log.info("user %s unsubscribed from email in %s (%d opt-ins withdrawn)", user_id, section_id, withdrawn)
    return withdrawn


def _stored(s: Session, section_id: str, listed: OptIn) -> OptIn:
    """The stored opt-in row of an identifier a subscriber list opts in (a view, not a row):
    its row by hash when the API stored one before the list, else a new one. Under the opt-in API's
    lock of that row (PostgreSQL): both read "no row" and the second insert was a duplicate key."""
    lock_key(s, opt_in_lock_key(section_id, CHANNEL, listed.value_hash))
    row = find_opt_in(s, section_id, CHANNEL, listed.value_hash)
    if row is not None:
        return row
    return OptIn(
        section_id=section_id, channel=CHANNEL, identifier_type=listed.identifier_type,
        value_hash=listed.value_hash, value_enc=listed.value_enc, opted_in=False, updated_at=now_utc(),
    )  # fmt: skip
