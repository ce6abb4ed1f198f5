"""Reconnect's legacy link shapes, for emails sent before a customer migrated to Rejoin.

`/tremclk?cuid=…&cuidType=…&sec=…&expId=…&targetUrl=<destination>` and the open pixel
`/tremop/?cuid=…&sec=…` (docs: shared reference tracking.md). Route a customer's old tracking
path (e.g. `https://www.acme.com/tremclk/`) to Rejoin and the links in already-sent emails keep
working. Nothing in them is signed, so:

* the destination is followed only when its host is in the section's `link_domains` (the section
  named by `sec`: a Rejoin section id or the section's `legacy_section_id`); anything else goes to
  the section's fallback like any dead link. Never an open redirect.
* a click (or open) is recorded only when the parameters name a Rejoin campaign of that section
  (`expId`) and a known user (`cuid`: a plain email as in the docs' `ihe` example, a hashed email,
  or the CUID itself) who was sent an email by that campaign; it counts on their latest such send.
  Such hits are forgeable by anyone who knows the parameters: `source = "legacy"` marks them.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from sqlmodel import Session, col, select

from api.deps import StateDep
from api.routes.tracking import UserAgent, dead_link, gif, record, redirect_to
from domain.events import email_hash
from domain.tracking import LegacyClick, host_allowed, parse_legacy_click
from store import section_links
from store.engine import Store
from store.tables import Campaign, Send, User, UserIdentifier
from store.users import by_cuid, canonical_user

router = APIRouter(tags=["tracking"])
log = logging.getLogger(__name__)


def _user(s: Session, section_id: str, click: LegacyClick) -> User | None:
    cuid = click.cuid
    if "@" in cuid:  # the docs' example: cuidType=ihe with the plain address; only its hash is looked up
        h = email_hash(cuid)
        ident = s.get(UserIdentifier, (section_id, "email", h))
        return canonical_user(s, ident.user_id) if ident is not None else by_cuid(s, section_id, h)
    if click.cuid_type.lower() in {"he", "hashedemail"}:
        cuid = cuid.lower()
    return by_cuid(s, section_id, cuid) if cuid else None


def _send(s: Session, section_id: str, click: LegacyClick) -> Send | None:
    """The latest accepted email of campaign `expId` to user `cuid`, or None: not identifiable."""
    campaign = s.get(Campaign, click.campaign) if click.campaign else None
    if campaign is None or campaign.section_id != section_id:
        return None
    user = _user(s, section_id, click)
    if user is None:
        return None
    query = select(Send).where(
        Send.campaign_id == campaign.id, Send.user_id == user.id, Send.channel == "email", Send.status == "accepted"
    )
    return s.exec(query.order_by(col(Send.created_at).desc())).first()


def _resolve(store: Store, click: LegacyClick) -> tuple[str | None, list[str], Send | None]:
    """(section id, its link domains, the send to count the hit on) for a legacy link."""
    with store.session() as s:
        section_id = section_links.legacy_owner(s, click.section)
        if section_id is None:
            return None, [], None
        return section_id, section_links.get(s, section_id).link_domains, _send(s, section_id, click)


@router.api_route("/tremclk", methods=["GET", "HEAD"], include_in_schema=False)
@router.api_route("/tremclk/", methods=["GET", "HEAD"], include_in_schema=False)
async def legacy_click(request: Request, state: StateDep, user_agent: UserAgent = None) -> Response:
    click = parse_legacy_click(request.url.query)
    try:
        section_id, domains, send = await asyncio.to_thread(_resolve, state.store, click)
    except Exception:  # a customer gets the neutral page, not an error
        log.exception("could not resolve a legacy link")
        section_id, domains, send = None, [], None
    if section_id is None or not host_allowed(click.target, domains):
        return await dead_link(state, section_id)
    if send is not None:
        await record(state, request, send_key=send.key, user_id=send.user_id, kind="click", source="legacy",
                     user_agent=user_agent, target=click.target, section_id=section_id)
    return redirect_to(click.target)


@router.api_route("/tremop", methods=["GET", "HEAD"], include_in_schema=False)
@router.api_route("/tremop/", methods=["GET", "HEAD"], include_in_schema=False)
async def legacy_pixel(request: Request, state: StateDep, user_agent: UserAgent = None) -> Response:
    """Always the GIF; an open is recorded only for an identifiable (campaign, user) send."""
    try:
        section_id, _, send = await asyncio.to_thread(_resolve, state.store, parse_legacy_click(request.url.query))
    except Exception:  # the pixel never fails
        log.exception("could not resolve a legacy pixel")
        section_id, send = None, None
    if send is not None and section_id is not None:
        await record(state, request, send_key=send.key, user_id=send.user_id, kind="impression", source="legacy",
                     user_agent=user_agent, section_id=section_id)
    return gif()
