"""Admin: re-encrypt every stored secret under the newest configured key (key rotation)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from api.deps import Admin, StateDep
from security.rotation import rotate_all

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.post("/rotate-secrets")
async def rotate_secrets(_: Admin, state: StateDep) -> dict[str, int]:
    """Counts of re-encrypted integration secret sets and stored identifiers."""
    return await asyncio.to_thread(rotate_all, state.store, state.box)
