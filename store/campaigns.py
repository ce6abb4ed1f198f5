"""Campaign specs by version (immutable once written, so cached per process), and the live
campaigns ingestion reads on every request (cached for a second: `LIVE_SECONDS`)."""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from domain.campaign import STORED, CampaignSpec
from store.tables import Campaign, CampaignVersion

# (campaign id, version) -> spec. A version never changes after it is written, so this cache
# needs no invalidation; it is bounded by the number of versions ever saved.
_specs: dict[tuple[str, int], CampaignSpec] = {}


class UnknownCampaign(LookupError):
    pass


def load_spec(session: Session, campaign_id: str, version: int) -> CampaignSpec:
    cached = _specs.get((campaign_id, version))
    if cached is not None:
        return cached
    row = session.exec(
        select(CampaignVersion).where(CampaignVersion.campaign_id == campaign_id, CampaignVersion.version == version)
    ).first()
    if row is None:
        raise UnknownCampaign(f"campaign {campaign_id} v{version} does not exist")
    spec = CampaignSpec.model_validate(row.spec, context={STORED: True})
    _specs[(campaign_id, version)] = spec
    return spec


class LiveCampaign(NamedTuple):
    """What ingestion reads of a campaign on every request: a plain row, no ORM object (loading
    `Campaign` entities cost ~0.2 ms of the ~4 ms ingestion transaction; docs/performance.md)."""

    id: str
    version: int
    status: str


# Built once (this runs for every ingested request): composing the statement cost more than running it.
_LIVE = select(Campaign.id, Campaign.version, Campaign.status).where(
    Campaign.section_id == bindparam("section_id"), col(Campaign.status).in_(("active", "paused"))
)


Live = list[tuple[LiveCampaign, CampaignSpec]]

# A section's live campaigns are read by every ingested request, and change a few times a day.
# Kept per process for this long: a round trip fewer per event (docs/performance.md). A change
# through this process's API is seen at once (`forget_live`); one made through another API
# process within `LIVE_SECONDS`. That is safe to miss briefly: a paused or archived campaign's
# steps are skipped when they come to send (`activities/journey.py::_decide`), and a journey
# triggered a moment after activation is what the shop asked for a moment earlier.
LIVE_SECONDS = 1.0
_live: dict[str, tuple[float, Live]] = {}
# Bumped by `forget_live`: a read that began before a change must not cache what it read.
_generation: dict[str, int] = {}
_lock = threading.Lock()


def live_campaigns(session: Session, section_id: str) -> Live:
    """Active and paused campaigns: active ones trigger; both must still see exits, or a journey
    paused mid-way would miss a purchase and remind a customer who already bought."""
    cached = _live.get(section_id)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    generation = _generation.get(section_id, 0)
    rows = session.connection().execute(_LIVE, {"section_id": section_id}).all()
    live = [(LiveCampaign(*row), load_spec(session, row.id, row.version)) for row in rows]
    with _lock:
        if _generation.get(section_id, 0) == generation:
            _live[section_id] = (time.monotonic() + LIVE_SECONDS, live)
    return live


def forget_live(section_id: str) -> None:
    """After a committed change to a section's campaigns: the next request reads them again."""
    with _lock:
        _generation[section_id] = _generation.get(section_id, 0) + 1
        _live.pop(section_id, None)


def active_campaigns(session: Session, section_id: str) -> list[tuple[Campaign, CampaignSpec]]:
    """Campaigns that may start journeys or runs now."""
    rows = session.exec(select(Campaign).where(Campaign.section_id == section_id, Campaign.status == "active")).all()
    return [(c, load_spec(session, c.id, c.version)) for c in rows]
