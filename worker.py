"""The worker: composition root for the journey workflow and its activities.

Builds the store, the provider registry and the activity objects once, then polls the task
queue. Run several (same settings) to scale out; SIGTERM drains in-flight sends first.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import httpx
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.broadcast import BroadcastActivities
from activities.delivery import Delivery
from activities.feeds import FeedActivities
from activities.journey import JourneyActivities
from activities.journey_step import JourneySteps
from activities.subscribers import SubscriberActivities
from domain.caps import CapPolicy
from domain.tracking import Signer
from providers.http import outbound_session, provider_call_timeouts
from providers.registry import ProviderRegistry
from runtime.temporal import connect_temporal
from security.crypto import SecretBox
from security.redact import configure_logging, install_log_redaction
from settings import Settings
from store.engine import Store
from workflows.broadcast import BroadcastWorkflow
from workflows.campaign_schedule import ScheduledCampaignWorkflow
from workflows.feeds import FeedSyncWorkflow
from workflows.journey import JourneyWorkflow
from workflows.subscribers import SubscriberSyncWorkflow

log = logging.getLogger("rejoin.worker")

MAX_CONCURRENT_ACTIVITIES = 100
HTTP_POOL_SIZE = 200  # connections across all HTTP/1.1 providers


@asynccontextmanager
async def build_worker(
    client: Client, settings: Settings, store: Store, *, task_queue: str | None = None
) -> AsyncIterator[Worker]:
    """A configured (not yet running) worker, with its HTTP client closed on exit."""
    install_log_redaction()
    read, connect = provider_call_timeouts(settings.delivery_timeout)
    timeout = httpx.Timeout(read, connect=connect)
    # One pooled aiohttp session per process (bounded, reused across messages; it keeps up with
    # 100 sends in flight where a shared httpx client does not, see docs/performance.md); an
    # HTTP/2-capable httpx client for APNs, which speaks only HTTP/2 (one connection multiplexes).
    async with (
        outbound_session(limit=HTTP_POOL_SIZE, timeout=read, connect=connect) as http,
        httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=20), http2=True) as http2,
    ):
        box = SecretBox(settings.secret_keys)  # one per worker, shared by every activity
        registry = ProviderRegistry(
            store,
            http,
            allow_private_urls=settings.allow_private_urls,
            allowed_targets=settings.allowed_private_targets,
            http2=http2,
            delivery_timeout=settings.delivery_timeout,  # bounds an integration's own timeout_seconds
        )
        journey = JourneyActivities(
            store,
            CapPolicy(settings.global_cap_messages, settings.global_cap_window),
            settings.priority_window,
        )
        delivery = Delivery(
            store,
            registry,
            box,
            signer=Signer(settings.secret_keys),
            public_url=settings.effective_public_url,
        )
        steps = JourneySteps(journey, delivery)
        subscribers = SubscriberActivities(store, settings, box)
        feeds = FeedActivities(store, settings, client)  # the client: is another sync of a feed running?
        broadcast = BroadcastActivities(
            store,
            registry,
            box,
            CapPolicy(settings.global_cap_messages, settings.global_cap_window),
            settings.priority_window,
            signer=Signer(settings.secret_keys),
            public_url=settings.effective_public_url,
            concurrency=settings.broadcast_concurrency,
        )
        with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_ACTIVITIES) as pool:
            yield Worker(
                client,
                task_queue=task_queue or settings.task_queue,
                workflows=[
                    JourneyWorkflow, SubscriberSyncWorkflow, FeedSyncWorkflow, BroadcastWorkflow,
                    ScheduledCampaignWorkflow,
                ],  # fmt: skip
                activities=[
                    journey.enroll, journey.decide, journey.give_up, journey.finish, delivery.deliver,
                    steps.send_step, journey.give_up_step,
                    subscribers.list_folders, subscribers.claim, subscribers.sync_folder, subscribers.finish,
                    subscribers.cleanup, feeds.begin, feeds.stage, feeds.apply, feeds.fail,
                    broadcast.plan_feed_runs, broadcast.plan_scheduled_fire, broadcast.plan_audience, broadcast.set_state,
                    broadcast.deliver_batch,
                ],  # fmt: skip
                activity_executor=pool,
                workflow_runner=SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner(),
                max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
                graceful_shutdown_timeout=settings.delivery_timeout,
            )


async def run_worker_until(settings: Settings, stop: asyncio.Event) -> None:
    """Poll until `stop` is set, then drain in-flight activities and return."""
    client = await connect_temporal(settings)
    store = Store(settings.effective_database_url)
    async with build_worker(client, settings, store) as worker:
        log.info("worker polling %s on %s", settings.task_queue, settings.temporal_address)
        run = asyncio.create_task(worker.run())
        await stop.wait()
        await worker.shutdown()
        await run
    store.dispose()


async def run_worker(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_worker_until(settings, stop)


def main() -> None:
    configure_logging()  # as `rejoin worker`: PII masked, no request URLs (push tokens) at INFO
    asyncio.run(run_worker(Settings()))


if __name__ == "__main__":
    main()
