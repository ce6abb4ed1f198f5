"""API key checks: ingestion keys (`dy-api-key`), management keys and the admin key.

Keys are looked up by id and their secret compared in constant time. Verified keys are cached
per process for up to `CACHE_SECONDS`, so ingestion answers without a database read. Revocation
through the API clears that process's cache at once; every other API process checks the keys it
holds cached every `REVOCATION_CHECK_SECONDS` (`watch_revocations`, one small query), so a key
revoked anywhere stops working everywhere within about a second, and within `CACHE_SECONDS`
even while that check cannot reach the database.

One rule on every route: a missing, malformed, unknown, forged or revoked key is 401; a valid key
of the wrong kind is 403 (an ingestion key on a management route and the reverse, a section key on
an admin route, the admin key on a section route).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

from sqlmodel import Session, col, select

from api.errors import Forbidden, Unauthorized
from security.api_keys import parse_key, secret_matches
from store.engine import Store
from store.tables import ApiKey

log = logging.getLogger(__name__)

CACHE_SECONDS = 30.0
REVOCATION_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Principal:
    section_id: str
    kind: str  # ingestion | management
    key_id: str


_cache: dict[str, tuple[float, Principal]] = {}
# `key_digest` of every key this process forgot on its revocation. The rate limiter keeps a verified
# key's bucket after its cache entry expires (`api/limits.py`); a revoked key must lose it.
_revoked: set[str] = set()


def key_digest(presented: str) -> str:
    """The name a presented key goes by wherever it is kept outside this cache (never in clear)."""
    return hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def forget_key(key_id: str) -> None:
    """Drop a revoked key from the cache; its requests are looked up (and refused) again."""
    for k, (_, p) in list(_cache.items()):
        if p.key_id == key_id:
            _cache.pop(k, None)
            _revoked.add(key_digest(k))


def was_revoked(digest: str) -> bool:
    """Whether the key of this `key_digest` was verified in this process and revoked since."""
    return digest in _revoked


def forget_revoked(store: Store) -> list[str]:
    """Drop cached keys that were revoked since they were cached (by any process); their ids."""
    cached = {p.key_id for _, p in list(_cache.values())}
    if not cached:
        return []
    with store.session() as s:
        query = select(ApiKey.id).where(col(ApiKey.id).in_(cached), col(ApiKey.revoked_at).is_not(None))
        revoked = list(s.exec(query).all())
    for key_id in revoked:
        forget_key(key_id)
    return revoked


async def watch_revocations(store: Store, interval: float = REVOCATION_CHECK_SECONDS) -> None:
    """Run `forget_revoked` every `interval` seconds (an API process's lifespan task)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(forget_revoked, store)
        except Exception as exc:  # database briefly away: the cache's expiry still bounds a revoked key
            log.warning("checking cached API keys for revocation failed: %s", exc)


def verify_cached(presented: str | None, *, want: str) -> Principal | None:
    """`verify` without the database: the principal if the key was verified recently, else None."""
    if not presented:
        raise Unauthorized("missing API key")
    cached = _cached(presented)
    return None if cached is None else _of_kind(cached, want)


def is_verified(presented: str) -> bool:
    """Whether `presented` is a key verified recently (in this process's cache): no database read.
    The rate limiter gives such a key its own bucket (`api/limits.py`)."""
    return _cached(presented) is not None


def _cached(presented: str) -> Principal | None:
    cached = _cache.get(presented)
    if cached is None or cached[0] <= time.monotonic():
        return None
    return cached[1]


def verify(session: Session, presented: str | None, *, want: str) -> Principal:
    """The principal for a presented key of kind `want`, or 401/403."""
    return _of_kind(identify(session, presented), want)


def identify(session: Session, presented: str | None) -> Principal:
    """The principal of a live section key of any kind; 401 for a missing, malformed, unknown,
    forged or revoked one."""
    if not presented:
        raise Unauthorized("missing API key")
    principal = _cached(presented)
    if principal is not None:
        return principal
    parsed = parse_key(presented)
    if parsed is None:
        raise Unauthorized("invalid API key")
    key_id, secret = parsed
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None or not secret_matches(secret, row.secret_hash):
        raise Unauthorized("invalid or revoked API key")
    principal = Principal(section_id=row.section_id, kind=row.kind, key_id=row.id)
    _cache[presented] = (time.monotonic() + CACHE_SECONDS, principal)
    return principal


def _of_kind(principal: Principal, want: str) -> Principal:
    if principal.kind != want:
        raise Forbidden(
            f"{_article(principal.kind)} {principal.kind} key cannot be used here; use {_article(want)} {want} key"
        )
    return principal


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def is_admin_key(presented: str, admin_key: str) -> bool:
    return hmac.compare_digest(presented.encode(), admin_key.encode())


def verify_admin(presented: str | None, admin_key: str) -> None:
    """401 unless `presented` is the admin key (`refuse_section_key` turns a section key's 401 into 403)."""
    if not presented:
        raise Unauthorized("missing admin key")
    if not is_admin_key(presented, admin_key):
        raise Unauthorized("invalid admin key")


def refuse_section_key(session: Session, presented: str) -> None:
    """403 when `presented`, not the admin key, is a live section key: a valid key of the wrong
    kind is a 403 on every route, as an ingestion key on a management route is."""
    try:
        principal = identify(session, presented)
    except Unauthorized:
        return
    raise Forbidden(f"{_article(principal.kind)} {principal.kind} key cannot be used here; use the admin key")


def refuse_admin_key(presented: str, admin_key: str, want: str) -> None:
    """403 when the admin key is presented where a section key of kind `want` belongs."""
    if admin_key and is_admin_key(presented, admin_key):
        raise Forbidden(f"the admin key cannot be used here; use {_article(want)} {want} key")
