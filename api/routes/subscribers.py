"""Subscriber lists on S3 per channel integration: "Sync now", credentials, sync status.

`POST .../subscribers/sync` provisions the list on first use (bucket + the integration's
prefix, an IAM user restricted to that prefix, its access key shown once), makes sure the
integration's Temporal Schedule exists and triggers it. Credentials can be regenerated once;
after that the API refuses (the seeds: "contact support").

With `REJOIN_SUBSCRIBER_CREDENTIALS=operator` (an S3 without the AWS IAM API, such as MinIO)
Rejoin never calls IAM: "Sync now" provisions the location and the schedule only, its answer
says the operator issues the upload credentials, and regenerating them is a 409 saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlmodel import col, select
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from api.deps import Management, StateDep
from api.errors import Conflict, NotFound, Unavailable, Unprocessable
from api.temporal_errors import calling_temporal
from domain.subscribers import FILE_NAME, expected_header
from settings import Settings
from store import objects
from store.engine import Store
from store.subscriber_tables import SubscriberList, SubscriberRejection, SubscriberSync
from store.subscribers import force_refused
from store.tables import Integration, now_utc
from workflows.ids import subscriber_sync_id
from workflows.subscriber_models import SyncInput
from workflows.subscribers import SubscriberSyncWorkflow

router = APIRouter(prefix="/api/v1/integrations", tags=["subscribers"])
LIST_CHANNELS = {"email", "sms"}
MAX_CREDENTIALS = 2  # the first issue and one regeneration
Issuer = Literal["rejoin", "operator"]  # who gives the customer upload credentials (REJOIN_SUBSCRIBER_CREDENTIALS)


class Credentials(BaseModel):
    access_key_id: str
    secret_access_key: str
    regenerations_left: int


class Location(BaseModel):
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    file_name: str = FILE_NAME
    header: str
    folder_pattern: str = "upload_yyyy-MM-dd_HH-mm"


class SyncNow(BaseModel):
    location: Location
    credentials: Credentials | None = None  # only when just provisioned, and only when Rejoin issues them
    # "rejoin": through IAM, in `credentials` on first provisioning; "operator": never here, the
    # operator gives the customer access to `location` (REJOIN_SUBSCRIBER_CREDENTIALS=operator).
    credentials_issued_by: Issuer
    triggered: bool
    forced: list[str] = []  # refused folders (force=true) that this sync applies whatever they remove


class Rejection(BaseModel):
    line: int
    reason: str


class SyncOut(BaseModel):
    id: str
    folder: str
    state: str
    rows_accepted: int
    rows_rejected: int
    lines_read: int
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    rejections: list[Rejection] = []


class ListStatus(BaseModel):
    location: Location
    credentials_issued_by: Issuer
    access_key_id: str | None
    regenerations_left: int
    last_folder: str | None
    activated_at: datetime | None
    syncs: list[SyncOut]


def _operator_issues_keys(settings: Settings) -> bool:
    """Whether the operator, not Rejoin through IAM, gives customers their upload credentials."""
    return settings.subscriber_credentials == "operator"


def _issuer(settings: Settings) -> Issuer:
    return "operator" if _operator_issues_keys(settings) else "rejoin"


def _iam_user(integration_id: str) -> str:
    return f"rejoin-{integration_id}"[:64]


def _operator_issues(lst: SubscriberList | None) -> Conflict:
    where = f" to s3://{lst.bucket}/{lst.prefix}" if lst is not None else ""
    return Conflict(
        "subscriber-list credentials are issued by the operator (REJOIN_SUBSCRIBER_CREDENTIALS=operator), "
        f"not by Rejoin: ask them for upload access{where}",
        field="integration_id",
    )


def _location(settings: Settings, lst: SubscriberList, identifier_type: str) -> Location:
    return Location(
        bucket=lst.bucket, prefix=lst.prefix, endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region, header=expected_header(identifier_type),
    )  # fmt: skip


def _integration(store: Store, section_id: str, integration_id: str) -> Integration:
    with store.session() as s:
        integration = s.get(Integration, integration_id)
    if integration is None or integration.section_id != section_id:
        raise NotFound("no such integration", field="integration_id")
    if integration.channel not in LIST_CHANNELS:
        raise Unprocessable(
            f"subscriber lists are for email and sms; {integration.channel} opt-ins come from events",
            field="path.integration_id",
        )
    return integration


@contextmanager
def _s3(settings: Settings) -> Iterator[None]:
    """S3 calls of provisioning: no S3 configured, or one down or refusing the keys, is a 503 saying so."""
    if not settings.uses_s3:
        # Customers upload lists straight into S3 with their own keys: the local store cannot do that.
        if settings.object_store == "local":  # an endpoint and keys may well be set: they are not the cause
            raise Unavailable(
                "subscriber lists need an S3 object store, and REJOIN_OBJECT_STORE=local keeps every object "
                "(lists and uploaded feed files) in the data folder: set it to auto or s3"
            )
        raise Unavailable(
            "subscriber lists need an S3 object store: set REJOIN_S3_ENDPOINT_URL and keys "
            "(or REJOIN_OBJECT_STORE=s3 for AWS credentials from the environment)"
        )
    try:
        with objects.reachable(settings):
            yield
    except objects.ObjectStoreUnavailable as exc:
        raise Unavailable(str(exc)) from exc


def _provision(
    store: Store, settings: Settings, integration: Integration
) -> tuple[SubscriberList, Credentials | None]:
    """Create the list's S3 location and first credentials once; later calls return the row.

    When the operator issues credentials, no IAM user or key is made: the location only."""
    with store.session() as s:
        existing = s.get(SubscriberList, integration.id)
    if existing is not None:
        return existing, None
    operator = _operator_issues_keys(settings)
    lst = SubscriberList(
        integration_id=integration.id,
        section_id=integration.section_id,
        channel=integration.channel,
        bucket=settings.subscriber_bucket,
        prefix=f"{integration.section_id}/{integration.id}/",
        iam_user="" if operator else _iam_user(integration.id),  # no IAM user when the operator issues keys
        created_at=now_utc(),
    )
    creds: Credentials | None = None
    with _s3(settings):
        objects.ensure_bucket(objects.client(settings), lst.bucket)
        if not operator:
            key_id, secret = objects.issue_access_key(
                objects.client(settings, "iam"), lst.iam_user, lst.bucket, lst.prefix, None
            )
            lst.access_key_id, lst.credentials_issued = key_id, 1
            creds = Credentials(access_key_id=key_id, secret_access_key=secret, regenerations_left=MAX_CREDENTIALS - 1)
    with store.session() as s:
        if s.get(SubscriberList, integration.id) is not None:  # a concurrent first click won
            raise Conflict("the subscriber list is being provisioned; retry", field="integration_id")
        s.add(lst)
    return lst, creds


async def ensure_schedule(client: Client, settings: Settings, lst: SubscriberList) -> str:
    sid = subscriber_sync_id(lst.section_id, lst.integration_id)
    try:
        await client.create_schedule(
            sid,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    SubscriberSyncWorkflow.run,
                    SyncInput(
                        section_id=lst.section_id,
                        integration_id=lst.integration_id,
                        max_rejected_rows=settings.subscriber_max_rejected_rows,
                    ),
                    id=sid,
                    task_queue=settings.task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=settings.subscriber_sync_every)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
    except ScheduleAlreadyRunningError:
        pass
    return sid


FORCE = Query(
    False,
    description="Apply the folders whose sync was refused (they would remove most of the list) whatever they remove",
)


def _force(store: Store, integration_id: str) -> list[str]:
    with store.session() as s:
        lst = s.get(SubscriberList, integration_id)
        return force_refused(s, lst, now_utc()) if lst is not None else []


@router.post("/{integration_id}/subscribers/sync")
async def sync_now(integration_id: str, principal: Management, state: StateDep, force: bool = FORCE) -> SyncNow:
    """Provision on first use, then start a sync of every new upload folder now (with `force`, of the
    refused folders too: they are read again and applied)."""
    integration = await asyncio.to_thread(_integration, state.store, principal.section_id, integration_id)
    lst, creds = await asyncio.to_thread(_provision, state.store, state.settings, integration)
    # Marked in the store, not passed to this one run: the schedule's runs never overlap, and the next
    # one (triggered now, or its next fire if a run is under way) applies them.
    forced = await asyncio.to_thread(_force, state.store, lst.integration_id) if force else []
    client = await state.client()
    async with calling_temporal("start the subscriber list's sync", "the list is provisioned; send the request again"):
        sid = await ensure_schedule(client, state.settings, lst)
        await client.get_schedule_handle(sid).trigger()
    return SyncNow(
        location=_location(state.settings, lst, integration.identifier_type),
        credentials=creds,
        credentials_issued_by=_issuer(state.settings),
        triggered=True,
        forced=forced,
    )


def _regenerate(store: Store, settings: Settings, integration: Integration) -> Credentials:
    with store.session() as s:
        lst = s.get(SubscriberList, integration.id)
        if _operator_issues_keys(settings):  # Rejoin never calls IAM then
            raise _operator_issues(lst)
        if lst is None:
            raise Conflict("no subscriber list yet: use sync first", field="integration_id")
        if lst.credentials_issued >= MAX_CREDENTIALS:
            raise Conflict(
                "credentials were already regenerated once; contact support to issue more",
                field="integration_id",
            )
        if not lst.iam_user:  # provisioned while the operator issued credentials: Rejoin's first key now
            lst.iam_user = _iam_user(lst.integration_id)
        # Count first (committed with the new key): a crash after IAM issued a key cannot
        # grant a third credential.
        with _s3(settings):
            key_id, secret = objects.issue_access_key(
                objects.client(settings, "iam"), lst.iam_user, lst.bucket, lst.prefix, lst.access_key_id
            )
        lst.access_key_id = key_id
        lst.credentials_issued += 1
        s.add(lst)
        left = MAX_CREDENTIALS - lst.credentials_issued
    return Credentials(access_key_id=key_id, secret_access_key=secret, regenerations_left=left)


@router.post("/{integration_id}/subscribers/credentials")
async def regenerate_credentials(integration_id: str, principal: Management, state: StateDep) -> Credentials:
    """Issue a new access key (the old one stops working); allowed once after the first issue. A 409
    when the operator issues the credentials (REJOIN_SUBSCRIBER_CREDENTIALS=operator)."""
    integration = await asyncio.to_thread(_integration, state.store, principal.section_id, integration_id)
    return await asyncio.to_thread(_regenerate, state.store, state.settings, integration)


def _status(
    store: Store, settings: Settings, integration: Integration, limit: int, rejections: int
) -> ListStatus:
    with store.session() as s:
        lst = s.get(SubscriberList, integration.id)
        if lst is None:
            raise NotFound("no subscriber list yet: use sync first", field="integration_id")
        syncs = s.exec(
            select(SubscriberSync)
            .where(SubscriberSync.integration_id == integration.id)
            .order_by(col(SubscriberSync.folder).desc())
            .limit(limit)
        ).all()
        out: list[SyncOut] = []
        for sync in syncs:
            rows = s.exec(
                select(SubscriberRejection)
                .where(SubscriberRejection.sync_id == sync.id)
                .order_by(col(SubscriberRejection.line))
                .limit(rejections)
            ).all()
            out.append(
                SyncOut(
                    **sync.model_dump(exclude={"integration_id", "section_id", "generation"}),
                    rejections=[Rejection(line=r.line, reason=r.reason) for r in rows],
                )
            )
        operator = _operator_issues_keys(settings)
        return ListStatus(
            location=_location(settings, lst, integration.identifier_type),
            credentials_issued_by=_issuer(settings),
            access_key_id=lst.access_key_id,
            # None through Rejoin when the operator issues credentials.
            regenerations_left=0 if operator else max(0, MAX_CREDENTIALS - lst.credentials_issued),
            last_folder=lst.last_folder,
            activated_at=lst.activated_at,
            syncs=out,
        )


@router.get("/{integration_id}/subscribers")
async def list_status(
    integration_id: str,
    principal: Management,
    state: StateDep,
    limit: int = Query(10, ge=1, le=100),
    rejections: int = Query(100, ge=0, le=10_000),
) -> ListStatus:
    """Where to upload, the last folder applied, and recent syncs (newest first) with bad rows."""
    integration = await asyncio.to_thread(_integration, state.store, principal.section_id, integration_id)
    return await asyncio.to_thread(_status, state.store, state.settings, integration, limit, rejections)
