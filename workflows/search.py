"""Custom search attributes, so operators find journeys in the Temporal UI.

Example query: `RejoinCampaignId = "cmp_x" AND RejoinJourneyStatus = "waiting"`.
The embedded dev server registers these at start (`runtime/dev_server.py`); for a cluster,
`docker-compose.yml` runs `temporal operator search-attribute create` with the same list.
"""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeKey

SECTION_ID = SearchAttributeKey.for_keyword("RejoinSectionId")
CAMPAIGN_ID = SearchAttributeKey.for_keyword("RejoinCampaignId")
USER_ID = SearchAttributeKey.for_keyword("RejoinUserId")
VARIATION_ID = SearchAttributeKey.for_keyword("RejoinVariationId")
JOURNEY_STATUS = SearchAttributeKey.for_keyword("RejoinJourneyStatus")
STEP_INDEX = SearchAttributeKey.for_int("RejoinStepIndex")
NEXT_SEND_AT = SearchAttributeKey.for_datetime("RejoinNextSendAt")

ALL: list[SearchAttributeKey[Any]] = [SECTION_ID, CAMPAIGN_ID, USER_ID, VARIATION_ID, JOURNEY_STATUS, STEP_INDEX, NEXT_SEND_AT]

_TYPE_NAMES = {"KEYWORD": "Keyword", "INT": "Int", "DATETIME": "Datetime"}


def cli_definitions() -> list[str]:
    """`Name=Type` pairs as the Temporal CLI's `--search-attribute` flag expects."""
    return [f"{k.name}={_TYPE_NAMES[k.indexed_value_type.name.removeprefix('INDEXED_VALUE_TYPE_')]}" for k in ALL]
