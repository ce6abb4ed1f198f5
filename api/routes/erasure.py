"""Erasure of a person (GDPR art. 17, right to erasure): `DELETE /api/v1/users/{ref}`.

Two phases, in this order, so that nothing is erased while a journey could still be told nothing:
1. every active journey of the person (and of ids merged into them) is sent an exit signal,
   reason "erased"; a step's send already handed to the provider may still complete;
2. one store transaction erases their personal data (store/erasure.py), and ends the rows of
   journeys whose workflow was gone when signalled. It first takes ingestion's identity locks of
   the person, so a request of theirs accepted meanwhile is either erased or finds no one. If the
   person changed meanwhile (a login merged them into another user), nothing is erased and both
   phases run again for whom the ref names now.

If Temporal cannot be reached the request fails (503) before anything is erased; it can simply be
sent again. A person erased before is found by their Rejoin id only (their dyid and CUID no longer
lead to them) and answers 200 with all counts zero; any other unknown ref answers 404. A ref that is
the device id of one user and the CUID of another (an API-only shop's `user.id` equal to someone's
CUID) answers 409 naming both Rejoin ids, and nothing is erased: the operator repeats it with one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unavailable
from api.journeys import exit_journey
from api.temporal_errors import calling_temporal
from store.erasure import ERASED, Erased, Person, PersonChanged, erase, find_person
from store.tables import now_utc
from store.users import AmbiguousUserRef
from workflows.models import ExitSignal

router = APIRouter(prefix="/api/v1", tags=["journeys"])
log = logging.getLogger(__name__)
ATTEMPTS = 3  # lookups of a person who changes under the erasure (`PersonChanged`) before a 503


class ErasureOut(BaseModel):
    """What was erased: `journeys_exited` counts the journeys ended (signalled, or their row ended
    when the workflow was gone); `erased` counts rows deleted or blanked per kind of data."""

    user_id: str
    journeys_exited: int
    erased: dict[str, int]


def _find(state: StateDep, section_id: str, ref: str) -> Person:
    """The person `ref` names; 404 when none. 409 when it is the device id of one user and the CUID of
    another: erasing either would erase someone the operator may not mean, for good."""
    with state.store.session() as s:
        try:
            person = find_person(s, section_id, ref)
        except AmbiguousUserRef as exc:
            raise Conflict(str(exc), field="user_ref") from None
    if person is None:
        raise NotFound("no such user", field="user_ref")
    return person


def _erase(state: StateDep, person: Person, gone: list[str]) -> Erased:
    with state.store.session() as s:
        return erase(s, person, gone, now_utc())


async def _exit_journeys(state: StateDep, person: Person) -> tuple[int, list[str]]:
    """Signal every active journey to exit; (journeys signalled, workflow ids with no running workflow)."""
    if not person.workflow_ids:
        return 0, []
    client = await state.client()
    signal = ExitSignal(event_id="erasure_" + secrets.token_hex(8), reason=ERASED)
    async with calling_temporal("signal the person's journeys to exit", "nothing was erased; send the request again"):
        found = await asyncio.gather(*(exit_journey(client, wid, signal) for wid in person.workflow_ids))
    gone = [wid for wid, ok in zip(person.workflow_ids, found, strict=True) if not ok]
    return len(person.workflow_ids) - len(gone), gone


@router.delete("/users/{user_ref}")
async def erase_user(user_ref: str, principal: Management, state: StateDep) -> ErasureOut:
    """Erase a person's personal data and end their journeys (docs/security.md, "Erasure")."""
    for attempt in range(ATTEMPTS):
        person = await asyncio.to_thread(_find, state, principal.section_id, user_ref)
        signalled, gone = await _exit_journeys(state, person)
        try:
            erased = await asyncio.to_thread(_erase, state, person, gone)
            break
        except PersonChanged:
            # Merged into another user, or their identities kept changing under the erasure's
            # locks (store/erasure.py `_lock_person`): nothing was erased; look them up again.
            log.info("erasure of user %s: the person changed meanwhile (attempt %d)", person.user_id, attempt + 1)
    else:
        raise Unavailable("the person kept changing during the erasure: send it again")
    log.info("erased user %s", person.user_id)  # the opaque id only: no ref (it may be a CUID), no PII
    counts = erased.as_dict()
    ended = counts.pop("journeys_ended")
    return ErasureOut(user_id=person.user_id, journeys_exited=signalled + ended, erased=counts)
