"""First-party tracking: click redirects, open pixel, SMS short links, push engagement.

Click links are signed tokens (domain/tracking.py), so this is never an open redirect. A dead
link (tampered or foreign token, unknown short code, older than `REJOIN_LINK_TTL`) never goes
to its own target and records nothing: it goes to the section's fallback URL, else the
deployment's, else a neutral 200 page (never a 404 to a customer). The pixel always answers the
same GIF (no validity oracle) and records only live, valid hits. Every hit is stored; bots, link
scanners and mail privacy proxies prefetching the pixel (Apple Mail Privacy Protection: reason
`privacy_proxy`) are flagged (`bot_reason`) and left out of reports. Reports count a send's
opens and clicks once each (its first human hit of the kind, `first_of_send`); every human hit
is also counted, as the totals (docs/reports.md). The first human click of an email send with no
open yet also records the open it implies (a hit of source `implied`, store/report_rollup.py
`implied_open`), so a send clicked is a send opened and CTR never exceeds 1.

Unsubscribe links (`/t/u/<token>`, signed like clicks) opt the recipient out of email in the
section: a POST does it (RFC 8058 one-click, from the mail app, or the button of the page a GET
shows); a GET alone never does, since link scanners follow every link of a message.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.deps import AppState, Ingestion, StateDep
from domain.tracking import UNSUBSCRIBE, Signer, bot_reason, expired, issued_at, safe_target
from store import report_rollup, section_links, unsubscribe
from store.engine import Store
from store.tables import Send, now_utc
from store.users import canonical_id
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
DEAD_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>This link has expired</title></head>
<body style="font-family:system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;color:#333">
<h1 style="font-size:1.4em">This link has expired</h1>
<p>The link you followed is no longer valid. You can close this page.</p>
</body></html>
"""


async def record(state: AppState, request: Request, **kw: Any) -> TrackingHit | None:
    """Record a hit unless its client address is over its recording rate (the caller answers anyway)."""
    client = request.client.host if request.client else "unknown"
    if state.settings.tracking_hits_per_second > 0 and state.tracking_hits.take(client) > 0:
        log.info("not recording a %s hit: %s is over its tracking rate", kw.get("kind"), client)
        return None
    return await asyncio.to_thread(record_hit, state.store, method=request.method, **kw)


# Attempts at recording one hit: a human hit of a send is flagged under the send's lock
# (store/report_rollup.py, `send_hits_lock_key`), so it does not collide on `ux_hit_send_first`;
# should one (a first flagged by something else meanwhile), each attempt re-reads the send's hits.
RECORD_ATTEMPTS = 3


def record_hit(store: Store, **kw: Any) -> TrackingHit | None:
    """Best effort: a recipient is redirected (or gets the GIF) even if recording fails (logged
    with the reason).

    The human hits of one send recorded at once are flagged first of the send (and a click's
    implied open added) one after the other, under the send's lock; the unique index
    `ux_hit_send_first` refusing one all the same, the hit is recorded again, seeing the first."""
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            return _record(store, **kw)
        except IntegrityError:
            if attempt < RECORD_ATTEMPTS:
                log.info("recording a %s hit again: it collided with another (attempt %d)", kw.get("kind"), attempt)
                continue
            log.exception("could not record a %s hit", kw.get("kind"))
        except Exception:  # a click must never break because the database hiccuped
            log.exception("could not record a %s hit", kw.get("kind"))
        return None
    return None


def _record(
    store: Store, *, send_key: str, user_id: str, kind: str, source: str, method: str,
    user_agent: str | None, target: str | None = None, section_id: str | None = None,
) -> TrackingHit | None:  # fmt: skip
    """Store one hit for the send; None when the send is unknown (previews) or not this user's.

    The hit belongs to the send's user: a link's user may since have been merged into them.
    """
    if not send_key:
        return None
    with store.session() as s:
        send = s.get(Send, send_key)
        if send is None or not _recipient(s, send, user_id) or (section_id and send.section_id != section_id):
            return None
        at = now_utc()
        hit = TrackingHit(
            section_id=send.section_id, campaign_id=send.campaign_id, variation_id=send.variation_id,
            step_index=send.step_index, channel=send.channel, send_key=send.key, user_id=send.user_id,
            kind=kind, source=source, target=target, user_agent=(user_agent or "")[:500] or None, at=at,
            bot_reason=bot_reason(method=method, user_agent=user_agent, at=at, sent_at=send.updated_at, kind=kind,
                                  accepted=send.status == "accepted"),
        )  # fmt: skip
        hit.bot = hit.bot_reason is not None
        s.add(hit)
        report_rollup.count_hit(s, hit)
        return hit


def _recipient(s: Session, send: Send, user_id: str) -> bool:
    """Whether a link minted for `user_id` may count for `send`: the send's own user, or a user
    merged into it since (a merge re-points the send; the signed `u` of the link keeps the old id)."""
    return send.user_id == user_id or (bool(user_id) and canonical_id(s, user_id) == send.user_id)


def _signer(state: StateDep) -> Signer:
    return Signer(state.settings.secret_keys)


def redirect_to(target: str) -> Response:
    return RedirectResponse(target, status_code=302, headers={**NO_CACHE, "Referrer-Policy": "no-referrer"})


def _fallback_url(store: Store, section_id: str | None) -> str | None:
    if not section_id:
        return None
    try:
        with store.session() as s:
            return section_links.get(s, section_id).fallback_url
    except Exception:  # the neutral page is always a valid answer
        log.exception("could not read the fallback URL of %s", section_id)
        return None


async def dead_link(state: AppState, section_id: str | None) -> Response:
    """Where a dead link goes: the section's fallback URL, the deployment's, or a neutral page."""
    url = await asyncio.to_thread(_fallback_url, state.store, section_id) or state.settings.link_fallback_url
    if url and safe_target(url):
        return redirect_to(url)
    return HTMLResponse(DEAD_PAGE, status_code=200, headers={**NO_CACHE, "Referrer-Policy": "no-referrer"})


def link_state(store: Store, data: dict[str, Any], ttl: timedelta) -> tuple[bool, str | None]:
    """(alive, section id) of a link's data. Links minted before links carried their section and
    issue time (`s`, `i`) take both from their send; a preview link without either is alive."""
    section = data.get("s") if isinstance(data.get("s"), str) else None
    issued = issued_at(data)
    key = data.get("k")
    if (section is None or issued is None) and isinstance(key, str) and key:
        try:
            with store.session() as s:
                send = s.get(Send, key)
        except Exception:  # like recording, best effort: a validly signed link still works
            log.exception("could not read the send of a tracking link")
            send = None
        if send is not None:
            section, issued = section or send.section_id, issued or send.created_at
    return not expired(issued, now_utc(), ttl), section


async def _live(state: AppState, kind: str, token: str) -> dict[str, Any] | None:
    """The data of a valid, unexpired token of `kind`, else None."""
    data = _signer(state).verify(kind, token)
    if data is None:
        return None
    alive, _ = await asyncio.to_thread(link_state, state.store, data, state.settings.link_ttl)
    return data if alive else None


async def _dead_token(state: AppState, token: str) -> Response:
    """A dead click token: its section (read even from a forged token) only picks the fallback page."""
    data = Signer.unverified(token)
    section = None
    if data is not None:
        _, section = await asyncio.to_thread(link_state, state.store, data, state.settings.link_ttl)
    return await dead_link(state, section)


@router.api_route("/t/c/{token}", methods=["GET", "HEAD"], include_in_schema=False)
async def click(token: str, request: Request, state: StateDep, user_agent: UserAgent = None) -> Response:
    data = await _live(state, "c", token)
    target = data.get("t") if data else None
    if data is None or not isinstance(target, str) or not safe_target(target):
        return await _dead_token(state, token)
    await record(state, request, send_key=str(data.get("k", "")), user_id=str(data.get("u", "")),
                 kind="click", source="link", user_agent=user_agent, target=target)  # fmt: skip
    return redirect_to(target)


@router.api_route("/t/o/{token}.gif", methods=["GET", "HEAD"], include_in_schema=False)
async def pixel(token: str, request: Request, state: StateDep, user_agent: UserAgent = None) -> Response:
    data = await _live(state, "o", token)
    if data is not None:
        await record(state, request, send_key=str(data.get("k", "")), user_id=str(data.get("u", "")),
                     kind="impression", source="pixel", user_agent=user_agent)  # fmt: skip
    return gif()


def gif() -> Response:
    return Response(GIF, media_type="image/gif", headers=NO_CACHE)


def _short(store: Store, code: str) -> ShortLink | None:
    with store.session() as s:
        return s.get(ShortLink, code)


@router.api_route("/s/{code}", methods=["GET", "HEAD"], include_in_schema=False)
async def short_link(code: str, request: Request, state: StateDep, user_agent: UserAgent = None) -> Response:
    link = await asyncio.to_thread(_short, state.store, code) if 6 <= len(code) <= 32 else None
    if link is None:
        return await dead_link(state, None)
    if expired(link.created_at, now_utc(), state.settings.link_ttl) or not safe_target(link.target):
        return await dead_link(state, link.section_id)
    await record(state, request, send_key=link.send_key, user_id=link.user_id, kind="click",
                 source="short", user_agent=user_agent, target=link.target)  # fmt: skip
    return redirect_to(link.target)


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
    # Why each ignored engagement was, `{"code", "field", "message"}` as ingestion's warnings: a
    # backend moving from the Experience API sends its recommendation engagements (CLICK, IMP,
    # SLOT_CLICK...) here too, which Rejoin has nothing to record for.
    warnings: list[dict[str, str]] = []


PUSH_KINDS: dict[str, Literal["click", "impression"]] = {"PN_CLICK": "click", "PN_IMP": "impression", "PN_IMPRESSION": "impression"}


@router.post("/v2/collect/user/engagement", status_code=202, tags=["ingestion"])
async def engagement(body: EngagementRequest, principal: Ingestion, state: StateDep) -> EngagementAck:
    """Push clicks/impressions: the app echoes the `trackingData` ({"rjt": token}) it received."""
    device = (body.context or {}).get("device") or {}
    ua = device.get("userAgent") if isinstance(device, dict) else None
    recorded, warnings = 0, []
    for i, e in enumerate(body.engagements):
        kind = PUSH_KINDS.get(e.type.upper())
        token = (e.trackingData or {}).get("rjt")
        data = await _live(state, "p", token) if kind and isinstance(token, str) else None
        if data is not None and kind is not None:
            hit = await asyncio.to_thread(record_hit, state.store, send_key=str(data.get("k", "")),
                                          user_id=str(data.get("u", "")), kind=kind, source="push", method="POST",
                                          user_agent=ua, section_id=principal.section_id)  # fmt: skip
            if hit is not None:
                recorded += 1
                continue
        warnings.append(_not_recorded(i, kind, token, data))
    return EngagementAck(recorded=recorded, ignored=len(body.engagements) - recorded, warnings=warnings)


def _not_recorded(i: int, kind: str | None, token: Any, data: dict[str, Any] | None) -> dict[str, str]:
    """Why engagement `i` was not recorded."""
    if kind is None:
        return {"code": "UNSUPPORTED_ENGAGEMENT", "field": f"engagements.{i}.type",
                "message": f"only push engagements are recorded ({', '.join(PUSH_KINDS)}); recommendation "
                           "engagements of the Experience API have no Rejoin message to count against"}  # fmt: skip
    if not isinstance(token, str):
        return {"code": "NO_TRACKING_TOKEN", "field": f"engagements.{i}.trackingData.rjt",
                "message": "no Rejoin tracking token: send back the push's trackingData as received"}  # fmt: skip
    if data is None:
        return {"code": "INVALID_TRACKING_TOKEN", "field": f"engagements.{i}.trackingData.rjt",
                "message": "the tracking token is not valid or has expired (REJOIN_LINK_TTL)"}  # fmt: skip
    return {"code": "UNKNOWN_SEND", "field": f"engagements.{i}.trackingData.rjt",
            "message": "the token's send is unknown here (another section's, a preview's) or not its user's"}


# ------------------------------------------------------------------------- unsubscribe


def _page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;color:#333">
<h1 style="font-size:1.4em">{title}</h1>
{body}
</body></html>
"""


# The form posts what a mail app's one-click POST sends (RFC 8058), to the page's own URL.
CONFIRM_PAGE = _page("Unsubscribe", """<p>Stop receiving these emails?</p>
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit" style="font-size:1em;padding:.5em 1.2em">Unsubscribe</button>
</form>""")
UNSUBSCRIBED_PAGE = _page(
    "You are unsubscribed", "<p>You will no longer receive these emails. You can close this page.</p>"
)
INVALID_UNSUBSCRIBE_PAGE = _page(
    "This link is no longer valid",
    "<p>This unsubscribe link has expired or is not valid. Use the link in a more recent email.</p>",
)
PREVIEW_PAGE = _page("Preview", "<p>This link comes from a message preview: nothing was changed.</p>")
_PAGE_HEADERS = {**NO_CACHE, "Referrer-Policy": "no-referrer"}


def _preview(data: dict[str, Any]) -> bool:
    """A link minted by a preview (no send key): it works, and changes nothing, like its clicks."""
    return not data.get("k")


def _unsubscribe(store: Store, data: dict[str, Any]) -> None:
    """Opt the token's user (as merged since) out of email in its section."""
    section, user = data.get("s"), data.get("u")
    if not isinstance(section, str) or not isinstance(user, str) or not section or not user:
        return
    with store.session() as s:
        unsubscribe.unsubscribe_email(s, section, canonical_id(s, user))


@router.api_route("/t/u/{token}", methods=["GET", "HEAD"], include_in_schema=False)
async def unsubscribe_page(token: str, state: StateDep) -> Response:
    """The link as a person opens it: a confirmation page whose button POSTs. Opts nobody out."""
    data = await _live(state, UNSUBSCRIBE, token)
    if data is None:
        return HTMLResponse(INVALID_UNSUBSCRIBE_PAGE, headers=_PAGE_HEADERS)
    return HTMLResponse(PREVIEW_PAGE if _preview(data) else CONFIRM_PAGE, headers=_PAGE_HEADERS)


@router.post("/t/u/{token}", include_in_schema=False)
async def unsubscribe_post(token: str, state: StateDep) -> Response:
    """One-click unsubscribe (RFC 8058 `List-Unsubscribe=One-Click`, whatever the body says, as
    mail apps send it) or the confirmation page's button. A forged, tampered or expired token
    changes nothing."""
    data = await _live(state, UNSUBSCRIBE, token)
    if data is None:
        return HTMLResponse(INVALID_UNSUBSCRIBE_PAGE, status_code=400, headers=_PAGE_HEADERS)
    if _preview(data):
        return HTMLResponse(PREVIEW_PAGE, headers=_PAGE_HEADERS)
    await asyncio.to_thread(_unsubscribe, state.store, data)
    return HTMLResponse(UNSUBSCRIBED_PAGE, headers=_PAGE_HEADERS)
