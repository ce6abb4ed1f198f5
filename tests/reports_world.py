"""Report test data: raw rows for one campaign at chosen times, each through the write path.

Every fact is inserted as the engine stores it and passed to the same store.report_rollup
function the engine calls in that transaction, so the pre-aggregated counters are built the
way production builds them (journey allocation, final send status, hit, purchase ingestion).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from store import report_rollup
from store.engine import Store
from store.tables import Event, Journey, Send, User
from store.tracking_tables import TrackingHit

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class World:
    """Writes journeys, sends, hits and events for one campaign at chosen times."""

    def __init__(self, store: Store, section_id: str, campaign_id: str) -> None:
        self.store, self.section_id, self.cid = store, section_id, campaign_id
        self.identified: dict[str, bool] = {}

    def user(
        self, variation: str, triggered: datetime, identified: bool = True, control: bool = False, is_test: bool = False
    ) -> str:
        uid = "usr_" + secrets.token_hex(6)
        with self.store.session() as s:
            s.add(
                User(
                    id=uid,
                    section_id=self.section_id,
                    cuid=uid if identified else None,
                    created_at=EPOCH,
                    updated_at=EPOCH,
                )
            )
        self.identified[uid] = identified
        self.retrigger(uid, variation, triggered, control=control, is_test=is_test)
        return uid

    def retrigger(self, uid: str, variation: str, at: datetime, control: bool = False, is_test: bool = False) -> None:
        with self.store.session() as s:
            journey = Journey(
                id=f"j_{uid}_{at.timestamp()}",
                workflow_id="w",
                section_id=self.section_id,
                campaign_id=self.cid,
                campaign_version=1,
                user_id=uid,
                variation_id=variation,
                is_control=control,
                is_test=is_test,
                triggered_at=at,
            )
            s.add(journey)
            report_rollup.register_cohort(s, journey)

    def send(
        self, uid: str, variation: str, step_index: int, channel: str, at: datetime, status: str = "accepted"
    ) -> str:
        key = f"{self.cid}:{uid}:{step_index}:{channel}:{secrets.token_hex(3)}"
        with self.store.session() as s:
            send = Send(
                key=key,
                journey_id="j",
                section_id=self.section_id,
                campaign_id=self.cid,
                variation_id=variation,
                step_index=step_index,
                channel=channel,
                integration_id="i",
                user_id=uid,
                status=status,
                created_at=at,
                updated_at=at,
            )
            s.add(send)
            report_rollup.count_send(s, send, "in_flight")
        return key

    def hit(
        self,
        uid: str,
        variation: str,
        kind: str,
        at: datetime,
        channel: str = "email",
        step_index: int = 0,
        bot: bool = False,
        send_key: str | None = None,
    ) -> None:
        with self.store.session() as s:
            hit = TrackingHit(
                section_id=self.section_id,
                campaign_id=self.cid,
                variation_id=variation,
                step_index=step_index,
                channel=channel,
                send_key=send_key or f"{self.cid}:{uid}:{step_index}:{channel}",  # one send per user, step, channel
                user_id=uid,
                kind=kind,
                source="link",
                bot=bot,
                bot_reason="head_request" if bot else None,
                at=at,
            )
            s.add(hit)
            report_rollup.count_hit(s, hit)

    def event(self, uid: str, kind: str, at: datetime, value: float = 0.0, tx: str | None = None) -> str:
        eid = "evt_" + secrets.token_hex(8)
        with self.store.session() as s:
            event = Event(
                id=eid,
                section_id=self.section_id,
                user_id=uid,
                kind=kind,
                name=kind,
                data={},
                received_at=at,
                value=value,
                transaction_id=tx,
            )
            s.add(event)
            report_rollup.attribute_event(s, event, identified=self.identified.get(uid, True))
        return eid
