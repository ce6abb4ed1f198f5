"""A worker in its own process, configured from REJOIN_* / TEMPORAL_* environment variables.

Tests that must kill a worker mid-delivery (SIGKILL, no drain) run it this way; it prints
`ready` once it polls.
"""

from __future__ import annotations

import asyncio

from runtime.temporal import connect_temporal
from settings import Settings
from store.engine import Store
from worker import build_worker


async def main() -> None:
    settings = Settings()
    client = await connect_temporal(settings)
    store = Store(settings.effective_database_url)
    async with build_worker(client, settings, store) as w:
        print("ready", flush=True)
        await w.run()


if __name__ == "__main__":
    asyncio.run(main())
