"""What deciding a step read that delivering it needs again, when both run in one transaction.

`journey.send_step` decides and marks the send in flight in one transaction; without this the
delivery half would read the user, the journey's variation and the channel's integration and
opt-in again (7 of a step's 31 statements). Rows read in the same transaction are the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.reachability import Reach
from store.tables import User


@dataclass
class StepReads:
    user: User | None = None
    variation_id: str | None = None
    reach: Reach | None = None  # of every channel of the step: integrations and opt-ins by channel
