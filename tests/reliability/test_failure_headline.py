"""What an operator sees in Temporal for a send that keeps failing: the pending activity's last
failure names the reason (an operator trial saw "Failure exceeds size limit." instead).

Temporal keeps a retried activity's last failure only up to a size limit (about 4 KB): a larger one
is replaced by a server failure "Failure exceeds size limit." with the real one as its cause, which
`temporal workflow describe` and the UI show as the headline. A provider error raised with its
chain (aiohttp's exception, the ProviderError, each with a stack trace) went over it.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from tests.helpers import (
    add_integration,
    add_to_cart,
    cart_campaign,
    collect,
    create_campaign,
    journey_handle,
    make_section,
    reachable_user,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_pending_send_failure_headline_names_the_connection_error(
    api: httpx.AsyncClient, env: WorkflowEnvironment
) -> None:
    sec = await make_section(api)
    url = f"http://127.0.0.1:{_closed_port()}/send"
    await add_integration(api, sec, kind="custom_http", config={"url": url})
    cid = await create_campaign(api, sec, cart_campaign(wait="PT1H"))
    dyid, uid = await reachable_user(api, sec)
    await collect(api, sec, dyid, add_to_cart("sku-1"))
    handle = journey_handle(env.client, sec, cid, uid)
    try:
        for _ in range(300):
            desc = await handle.describe()
            failed = [a for a in desc.raw_description.pending_activities if a.HasField("last_failure")]
            if failed:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no pending activity failed")
        (activity,) = failed
        assert activity.activity_type.name == "journey.send_step"
        failure = activity.last_failure
        assert "exceeds size limit" not in failure.message, failure
        assert "connection error" in failure.message and "Cannot connect to host" in failure.message, failure
        assert failure.application_failure_info.type == "ProviderUnavailable"
        assert not failure.HasField("cause"), failure.cause  # the chain's tracebacks stay in the worker
        assert failure.ByteSize() < 2048, failure.ByteSize()
    finally:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test over")
