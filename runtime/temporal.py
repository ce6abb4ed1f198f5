"""One way to connect to Temporal, shared by the API, the worker and the tests."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig

from settings import Settings

# The API's calls give up after about a second of the client's own retries (UNAVAILABLE, INTERNAL;
# RESOURCE_EXHAUSTED is retried once, a second later): a request waiting on Temporal answers its
# 503/502 then, and the caller retries (`Retry-After`) or the sweeper does (ingestion). The SDK's
# default (up to 10 s of retries, about 15 s under RESOURCE_EXHAUSTED) held every such request that
# long; it stays the worker's, which has no caller waiting.
REQUEST_RETRY = RetryConfig(max_elapsed_time_millis=1000)


async def connect_temporal(settings: Settings, *, retry_config: RetryConfig | None = None) -> Client:
    """A client of the configured Temporal; `retry_config` None: the SDK's patient default (the worker)."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        retry_config=retry_config,
    )
