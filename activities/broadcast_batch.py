"""What one batch of a run shares (`Batch`), and one recipient ready for its provider call (`Ready`).

Shared by the one-recipient path (activities/broadcast.py) and the chunked one
(activities/broadcast_plain.py)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.campaign import CampaignSpec
from domain.caps import CapPolicy
from providers.base import OutboundMessage, Provider
from security.crypto import SecretBox
from store.tables import Integration


@dataclass(frozen=True)
class Batch:
    """What a batch reads once for all its recipients, not in each one's transaction: nothing here
    changes meaningfully in the seconds a batch takes. The run's identity never changes; the section's
    cap and integrations are settings (an edit applies from the next batch, as the campaign's spec
    read once per batch always did). A campaign's pause is read per recipient."""

    spec: CampaignSpec
    run_id: str
    section_id: str
    campaign_id: str
    campaign_version: int
    cap_policy: CapPolicy  # with the section's own global cap, if it has one
    integrations: dict[str, Integration]  # the section's, of the channels the campaign may use
    # Integration id -> its decrypted secrets, filled on first use (a decryption per recipient cost more).
    secrets: dict[str, dict[str, Any]]

    def secrets_of(self, box: SecretBox, integration: Integration) -> dict[str, Any]:
        """The integration's secrets, a fresh copy (senders share the cache across threads)."""
        found = self.secrets.get(integration.id)
        if found is None:
            found = json.loads(box.decrypt(integration.secrets_enc)) if integration.secrets_enc else {}
            self.secrets[integration.id] = found
        return copy.deepcopy(found)


@dataclass
class Ready:
    message: OutboundMessage
    provider: Provider
    kind: str  # the integration's provider kind
    send_key: str
    journey_id: str  # the recipient's journey row: its send time is what priority compares
    opt_in_id: int | None = None  # the recipient's consent row: opted out if the provider says it is gone
    fell_back: str | None = None  # the channels that failed before this one (the recipient row's reason)
    attempt: int = 1  # the send row's attempts with this one
    # The send row before this attempt made it in flight (status, possible duplicate, kept message);
    # None: it is new.
    before: tuple[str, bool, str | None] | None = None
    # The integration's `updated_at` as the batch read it (`Batch.integrations`), with the credentials
    # this call carries: a 401/403 after the integration changed since is a key rotated mid-call
    # (`activities.provider_retry.refused_replaced_credentials`). Its id is the message's `integration_id`.
    config_as_of: datetime | None = None
