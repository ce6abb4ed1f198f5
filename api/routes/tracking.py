"""First-party tracking: click redirects, open pixel, SMS short links, push engagement.

Click links are signed tokens (domain/tracking.py): a tampered or foreign token gets a 404 and
no redirect, so this is never an open redirect. The pixel always answers the same GIF (no
validity oracle) and records only valid hits. Every hit is stored; bots and link scanners are
flagged (`bot_reason`) and left out of reports.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import PlainTextResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Ingestion, StateDep
from domain.tracking import Signer, bot_reason, safe_target
from store import report_rollup
from store.engine import Store
from store.tables import Send, now_utc
from store.tracking_tables import ShortLink, TrackingHit

router = APIRouter(tags=["tracking"])
log = logging.getLogger(__name__)

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
UserAgent = Annotated[str | None, Header()]


def record_hit(store: Store, **kw: Any) -> TrackingHit | None:
    """Best effort: a recipient is redirected (or gets the GIF) even if recording fails."""
    try:
        return _record(store, **kw)
    except Exception:  # a click must never break because the database hiccuped
        log.exception("could not record a %s hit", kw.get("kind"))
        return None


def _record(
    store: Store, *, send_key: str, user_id: str, kind: str, source: str, method: str,
    user_agent: str | None, target: str | None = None, section_id: str | None = None,
) -> TrackingHit | None:  # fmt: skip
    """Store one hit for the send; None when the send is unknown (previews) or not this user's."""
    if not send_key:
        return None
    with store.session() as s:
        send = s.get(Send, send_key)
        if send is None or send.user_id != user_id or (section_id and send.section_id != section_id):
            return None
        at = now_utc()
        hit = TrackingHit(
            section_id=send.section_id, campaign_id=send.campaign_id, variation_id=send.variation_id,
            step_index=send.step_index, channel=send.channel, send_key=send.key, user_id=user_id,
            kind=kind, source=source, target=target, user_agent=(user_agent or "")[:500] or None, at=at,
            bot_reason=bot_reason(method=method, user_agent=user_agent, at=at, sent_at=send.updated_at),
        )  # fmt: skip
        hit.bot = hit.bot_reason is not None
        s.add(hit)
        report_rollup.count_hit(s, hit)
        return hit


def _signer(state: StateDep) -> Signer:
    return Signer(state.settings.secret_keys)


def _redirect(target: str) -> Response:
    return RedirectResponse(target, status_code=302, headers={**NO_CACHE, "Referrer-Policy": "no-referrer"})


def _refused() -> Response:
    return PlainTextResponse("This link is not valid.", status_code=404, headers=NO_CACHE)


@router.api_route("/t/c/{token}", methods=["GET", "HEAD"], include_in_schema=False)
async def click(token: str, request: Request, state: StateDep, user_agent: UserAgent = None) -> Response:
    data = _signer(state).verify("c", token)
    target = data.get("t") if data else None
    if not isinstance(target, str) or not safe_target(target):
        return _refused()
    await asyncio.to_thread(record_hit, state.store, send_key=str(data.get("k", "")), user_id=str(data.get("u", "")),  # type: ignore[union-attr]
                            kind="click", source="link", method=request.method, user_agent=user_agent, target=target)  # fmt: skip
    return _redirect(target)


@router.api_route("/t/o/{token}.gif", methods=["GET", "HEAD"], include_in_schema=False)
async def pixel(token: str, request: Request, state: StateDep, user_agent: UserAgent = None) -> Response:
    data = _signer(state).verify("o", token)
    if data is not None:
        await asyncio.to_thread(record_hit, state.store, send_key=str(data.get("k", "")), user_id=str(data.get("u", "")),
                                kind="impression", source="pixel", method=request.method, user_agent=user_agent)  # fmt: skip
    return Response(GIF, media_type="image/gif", headers=NO_CACHE)


def _short(store: Store, code: str) -> ShortLink | None:
    with store.session() as s:
        return s.get(ShortLink, code)


@router.api_route("/s/{code}", methods=["GET", "HEAD"], include_in_schema=False)
async def short_link(code: str, request: Request, state: StateDep, user_agent: UserAgent = None) -> Response:
    link = await asyncio.to_thread(_short, state.store, code) if 6 <= len(code) <= 32 else None
    if link is None or not safe_target(link.target):
        return _refused()
    await asyncio.to_thread(record_hit, state.store, send_key=link.send_key, user_id=link.user_id, kind="click",
                            source="short", method=request.method, user_agent=user_agent, target=link.target)  # fmt: skip
    return _redirect(link.target)


class Engagement(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=32)
    trackingData: dict[str, Any] | None = None


class EngagementRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    user: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] | None = None
    engagements: list[Engagement] = Field(min_length=1, max_length=100)


class EngagementAck(BaseModel):
    recorded: int
    ignored: int


PUSH_KINDS: dict[str, Literal["click", "impression"]] = {"PN_CLICK": "click", "PN_IMP": "impression", "PN_IMPRESSION": "impression"}


@router.post("/v2/collect/user/engagement", status_code=202, tags=["ingestion"])
async def engagement(body: EngagementRequest, principal: Ingestion, state: StateDep) -> EngagementAck:
    """Push clicks/impressions: the app echoes the `trackingData` ({"rjt": token}) it received."""
    signer = _signer(state)
    device = (body.context or {}).get("device") or {}
    ua = device.get("userAgent") if isinstance(device, dict) else None
    recorded = 0
    for e in body.engagements:
        kind = PUSH_KINDS.get(e.type.upper())
        token = (e.trackingData or {}).get("rjt")
        data = signer.verify("p", token) if kind and isinstance(token, str) else None
        if data is None or kind is None:
            continue
        hit = await asyncio.to_thread(record_hit, state.store, send_key=str(data.get("k", "")), user_id=str(data.get("u", "")),
                                      kind=kind, source="push", method="POST", user_agent=ua, section_id=principal.section_id)  # fmt: skip
        recorded += hit is not None
    return EngagementAck(recorded=recorded, ignored=len(body.engagements) - recorded)
