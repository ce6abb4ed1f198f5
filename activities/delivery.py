"""Delivery: render a step's message for its recipient and hand it to the provider, once.

The send is recorded under its idempotency key before the provider is called (`in_flight`) and
marked `accepted` after. A retry that finds `accepted` returns the stored result without
calling anyone; one that finds `in_flight` knows the previous attempt died with its outcome
unknown, calls again with the same key and flags the send as a possible duplicate unless the
provider honours the key. Every retry sends the message its first attempt composed, kept with
the send (`activities/frozen_message.py`), never one composed again. Permanent failures release
the cap slot and allow channel fallback, unless an earlier attempt may have been delivered
(`store.sends.maybe_delivered`). With a vendor that does not honour the key, an unknown outcome
is retried once: a second one fails the send as possibly delivered
(`activities/provider_retry.py::unknown_again`). A send that fails is logged once, at WARNING.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.frozen_message import FrozenMessage
from activities.gone_recipient import may_hand_over, may_try_next
from activities.provider_retry import (
    answer_of,
    log_failed,
    refused_replaced_credentials,
    retry_later,
    unknown_again,
    unknown_twice,
)
from activities.step_reads import StepReads
from domain.campaign import CampaignSpec, Variation
from domain.events import CartItem
from domain.identifiers import sendable_recipient
from domain.matching import product_record
from domain.render import MissingRequired, RenderContext, refs_in, render_payload
from domain.tracking import Linker, Signer
from providers import secret_fields
from providers.base import (
    ConfigurationError,
    OutboundMessage,
    Provider,
    ProviderError,
    ProviderResponse,
    kept_answer,
)
from providers.registry import ProviderRegistry
from security.crypto import SecretBox
from store import decisions, journey_rows, recommendations, report_rollup, reservations, sends
from store.campaigns import load_spec
from store.engine import Store
from store.reachability import opt_out_gone, reach
from store.report_rollup import PROVIDER_OPT_OUT
from store.tables import Integration, OptIn, Product, Send, User, now_utc
from store.tracking_tables import MessageTemplate, ShortLink
from store.users import canonical_id, canonical_user
from workflows.models import DeliverRequest, DeliverResult

log = logging.getLogger(__name__)

# The reason of a retry refused because the opt-in's address changed since the first attempt,
# which fixed the content (and its idempotency key) for the old one: sending it to the new
# address, or new content under the old key, would both be wrong. No fallback: the step's
# channel is reachable, at an address its message was not made for.
RECIPIENT_CHANGED = "recipient changed since the first attempt: not sent"


@dataclass
class _Prepared:
    message: OutboundMessage
    provider: Provider
    possible_duplicate: bool
    step_name: str
    opt_in_id: int | None  # the recipient's consent row: opted out if the provider says it is gone
    config_as_of: datetime  # the integration's `updated_at` the message's credentials were read at


@dataclass(frozen=True)
class _RateLimited:
    per_second: float  # the integration's limit, to wait for before the send is marked in flight


# What `begin_in` leaves for the provider call: a message to send, a result already known (done
# before, skipped, no longer opted in), or a rate limit to wait for first.
Prepared = _Prepared | DeliverResult | _RateLimited


def _rate_limit(integration: Integration | None) -> float | None:
    """The integration's sends-per-second limit; None when it has none (or it was deleted)."""
    rate = integration.config.get("rate_limit_per_second") if integration is not None else None
    return float(rate) if rate and float(rate) > 0 else None


class Delivery:
    def __init__(
        self,
        store: Store,
        providers: ProviderRegistry,
        secrets: SecretBox,
        *,
        signer: Signer | None = None,
        public_url: str = "",
    ) -> None:
        self.store = store
        self.providers = providers
        self.secrets = secrets
        self.signer = signer  # None: messages go out without tracking links
        self.public_url = public_url.rstrip("/")

    @activity.defn(name="delivery.deliver")
    async def deliver(self, req: DeliverRequest) -> DeliverResult:
        # Wait for the integration's rate limit before the send is marked in flight: a wait that
        # outlasts the attempt must not make the retry look like a possible duplicate.
        # Most integrations have no rate limit: then `_begin` goes ahead in the same transaction
        # that looked (one thread hop and one transaction fewer per send than a separate read).
        return await self.deliver_prepared(req, await asyncio.to_thread(self._begin, req, False))

    async def deliver_prepared(self, req: DeliverRequest, prepared: Prepared) -> DeliverResult:
        """`deliver` after `begin_in`: wait for the rate limit if asked, call the provider, record."""
        if isinstance(prepared, _RateLimited):
            await self.providers.limiter.acquire(req.integration_id, prepared.per_second)
            prepared = await asyncio.to_thread(self._begin, req, True)
            assert not isinstance(prepared, _RateLimited), "the limit was waited for"
        gone = 0  # recipients the provider reported gone so far in this attempt
        while True:
            if isinstance(prepared, DeliverResult):
                return prepared
            try:
                response = await prepared.provider.send(prepared.message)
            except ProviderError as err:
                if unknown_again(err, prepared.provider, prepared.possible_duplicate):
                    # Each repeat may deliver it again (a vendor slower than the read timeout got the
                    # same SMS ~40 times over the budget): possibly delivered, no fallback (`_fail_in`).
                    reason = unknown_twice(err, getattr(prepared.provider, "kind", "the provider"))
                    return await asyncio.to_thread(
                        self._fail, req, prepared.step_name, reason, err.status, err.body, answer=answer_of(err)
                    )
                if err.retryable or await asyncio.to_thread(
                    refused_replaced_credentials, self.store, err, req.integration_id, prepared.config_as_of
                ):
                    await asyncio.to_thread(self._note_retry, req, err)
                    # `from None`: Temporal keeps a retried activity's last failure only up to
                    # about 4 KB; the chain (the ProviderError, the client library's exception, each
                    # with its stack trace) went over it, and the UI's headline for the send read
                    # "Failure exceeds size limit." instead of the reason (`retry_later`'s message).
                    raise retry_later(err, req.send_key) from None
                if err.recipient_gone and prepared.opt_in_id is not None:
                    # The user's next live subscription on this channel, if any (else the failure):
                    # activities/gone_recipient.py, the rule batched runs follow too.
                    gone += 1
                    prepared = await asyncio.to_thread(self._gone, req, prepared, err, may_try_next(gone))
                    continue
                return await asyncio.to_thread(
                    self._fail, req, prepared.step_name, err.message, err.status, err.body, answer=answer_of(err)
                )
            except ConfigurationError as err:
                # Rejoin's own words (a vendor's text in it is masked where it was quoted: oauth.py)
                return await asyncio.to_thread(
                    self._fail, req, prepared.step_name, f"configuration: {err}", None, "", answer="configuration"
                )
            break
        assert isinstance(prepared, _Prepared)
        await asyncio.to_thread(self._accept, req, prepared, response)
        # A vendor that honours the key delivered the message once, whatever earlier attempts did.
        duplicate = prepared.possible_duplicate and not prepared.provider.honours_idempotency_key
        return DeliverResult(status="accepted", provider_status=response.status, possible_duplicate=duplicate)

    # ------------------------------------------------------------ store steps (threads)

    def _begin(self, req: DeliverRequest, rate_waited: bool) -> Prepared:
        with self.store.session() as s:
            return self.begin_in(s, req, rate_waited)

    def begin_in(
        self, s: Session, req: DeliverRequest, rate_waited: bool, reads: StepReads | None = None
    ) -> Prepared:
        """Mark the send in flight and compose its message, unless it is done already; a retry
        reuses the message its first attempt composed (`_resend_in`).

        Returns `_RateLimited`, having written nothing, when the integration has a rate limit not
        yet waited for; the caller waits for it and calls again. `reads`: what the decision made
        in this transaction read already (the user, the variation, the step's reach).
        """
        reads = reads or StepReads()
        integration = reads.reach.integrations.get(req.channel) if reads.reach is not None else None
        if integration is None or integration.id != req.integration_id:
            integration = s.get(Integration, req.integration_id)
        rate = _rate_limit(integration)
        if rate is not None and not rate_waited:
            return _RateLimited(rate)
        send = s.get(Send, req.send_key)
        if send is not None and send.status in ("accepted", "failed", "skipped"):
            log.info("already %s under %s, skipping the provider call", send.status, req.send_key)
            return DeliverResult(
                status="accepted" if send.status == "accepted" else "failed",
                provider_status=send.provider_status,
                possible_duplicate=send.possible_duplicate,
                reason=None if send.status == "accepted" else send.provider_response,
            )
        if integration is None:
            raise ApplicationError("integration was deleted", type="ConfigurationError", non_retryable=True)
        provider = self.providers.for_kind(integration.kind)
        now = now_utc()
        user = reads.user or canonical_user(s, req.user_id)  # once: the send row and the message both need it
        if send is None:
            send = Send(
                key=req.send_key,
                journey_id=req.journey_id,
                section_id=req.section_id,
                campaign_id=req.campaign_id,
                variation_id="",
                step_index=req.step_index,
                channel=req.channel,
                integration_id=req.integration_id,
                user_id=user.id if user is not None else canonical_id(s, req.user_id),
                status="in_flight",
                created_at=issue_time(req.as_of, now, user),
                updated_at=now,
            )
        elif send.status == "in_flight":
            # The previous attempt died after (maybe) reaching the provider: say so, never silently.
            # A vendor that honours the key settles it by accepting this attempt (`_accept`); until
            # then the send may have been delivered, even if this attempt is refused.
            send.possible_duplicate = True
        send.status = "in_flight"
        send.attempts += 1
        send.updated_at = now
        if send.message_enc is not None:
            # A retry: the content was fixed by the first attempt (`activities/frozen_message.py`).
            return self._resend_in(s, req, send, integration, provider, user, reads)
        try:
            # The send's time, kept from its first attempt: a retry mints the very same links.
            composed = self._compose(s, req, integration, user, reads, issued=send.created_at)
            content, step_name, variation_id, opt_in_id = composed
        except MissingRequired as err:
            send.variation_id = err.variation_id
            s.add(send)
            # The data is missing, not the channel: skip the step, never fall back.
            return self._fail_in(
                s, req, err.step_name, f"skipped: {err}", None, "", fallback=False, outcome="skipped"
            )
        send.variation_id = variation_id
        if content is not None:
            # Kept for the retries of this send, in the INSERT (or UPDATE) that marks it in flight.
            send.message_enc = content.seal(self.secrets)
        s.add(send)
        if content is None:
            return self._fail_in(s, req, step_name, "recipient no longer opted in", None, "", fallback=True)
        message = self._outbound(req, integration, content)
        return _Prepared(message, provider, send.possible_duplicate, step_name, opt_in_id, integration.updated_at)

    def _resend_in(
        self,
        s: Session,
        req: DeliverRequest,
        send: Send,
        integration: Integration,
        provider: Provider,
        user: User | None,
        reads: StepReads,
    ) -> Prepared:
        """A retry of a send whose first attempt fixed its content: the same message again, if the
        recipient is still opted in at the address it was composed for."""
        assert send.message_enc is not None
        content = FrozenMessage.open(self.secrets, send.message_enc)
        s.add(send)
        opt_in = self._opt_in(s, req, user.id if user is not None else send.user_id, reads)
        if opt_in is None:
            return self._fail_in(s, req, content.step_name, "recipient no longer opted in", None, "", fallback=True)
        if sendable_recipient(req.channel, self.secrets.decrypt(opt_in.value_enc)) != content.recipient:
            # Neither the old content to the new address nor new content under the old key.
            return self._fail_in(s, req, content.step_name, RECIPIENT_CHANGED, None, "", fallback=False)
        message = self._outbound(req, integration, content)
        return _Prepared(
            message, provider, send.possible_duplicate, content.step_name, opt_in.id, integration.updated_at
        )

    def _opt_in(self, s: Session, req: DeliverRequest, user_id: str, reads: StepReads) -> OptIn | None:
        """The opt-in that makes the user reachable on the send's channel now (None: not reachable)."""
        step_reach = reads.reach if reads.reach is not None else reach(s, req.section_id, user_id, [req.channel])
        return step_reach.opt_ins.get(req.channel)

    def _compose(
        self,
        s: Session,
        req: DeliverRequest,
        integration: Integration,
        user: User | None,
        reads: StepReads,
        *,
        issued: datetime,
    ) -> tuple[FrozenMessage | None, str, str, int | None]:
        spec = load_spec(s, req.campaign_id, req.campaign_version)
        variation_id = reads.variation_id or journey_rows.variation_of(s, req.journey_id)
        assert variation_id is not None and user is not None
        variation = spec.variation(variation_id)
        assert variation is not None
        step = variation.steps[req.step_index]
        opt_in = self._opt_in(s, req, user.id, reads)
        if opt_in is None:
            return None, step.name, variation.id, None
        recipient = sendable_recipient(req.channel, self.secrets.decrypt(opt_in.value_enc))
        linker = self._linker(s, req, issued)
        try:
            payload = compose_payload(
                s,
                section_id=req.section_id,
                spec=spec,
                variation=variation,
                step_index=req.step_index,
                channel=req.channel,
                user=user,
                identifier=recipient,
                items=trigger_items(s, req.section_id, user, spec.type.value, req.skus),
                linker=linker,
                as_of=req.as_of,
                native_email=integration.kind == "smtp",
            )
        except MissingRequired as err:
            err.step_name, err.variation_id = step.name, variation.id
            raise
        content = FrozenMessage(
            recipient=recipient,
            payload=payload,
            campaign_name=spec.name,
            step_name=step.name,
            unsubscribe_url=unsubscribe_url(req.channel, linker),
        )
        return content, step.name, variation.id, opt_in.id

    def _outbound(self, req: DeliverRequest, integration: Integration, content: FrozenMessage) -> OutboundMessage:
        """The provider call: the send's content with the integration's config and secrets as they
        are now (not frozen: credentials may rotate between attempts)."""
        secrets: dict[str, Any] = {}
        if integration.secrets_enc:
            secrets = json.loads(self.secrets.decrypt(integration.secrets_enc))
        return content.outbound(
            section_id=req.section_id,
            integration_id=integration.id,
            channel=req.channel,
            idempotency_key=req.send_key,
            config=secret_fields.merge(dict(integration.config), secrets),
            secrets=secrets,
        )

    def _linker(self, s: Session, req: DeliverRequest, issued: datetime) -> Linker | None:
        signer, url = self.signer, self.public_url
        return make_linker(signer, url, s, req.section_id, req.send_key, req.user_id, req.channel, issued)

    def _note_retry(self, req: DeliverRequest, err: ProviderError) -> None:
        with self.store.session() as s:
            send = s.get(Send, req.send_key)
            if send is None:
                return
            # A known answer (429/5xx) means not processed; a timeout leaves the outcome unknown.
            send.status = "in_flight" if err.outcome_unknown else "retrying"
            if err.outcome_unknown:
                # Flagged now, not only by the retry (`begin_in`): an exit or the budget may end
                # the send before any retry, and the message may have gone out all the same. Also
                # when the vendor honours the key: its later refusals (5xx) do not say whether it
                # processed this attempt; only its acceptance of a retry settles that (`_accept`).
                send.possible_duplicate = True
            send.provider_status = err.status
            send.provider_response = err.message[:2000]
            send.updated_at = now_utc()
            s.add(send)

    def _gone(
        self, req: DeliverRequest, prepared: _Prepared, err: ProviderError, next_one: bool
    ) -> _Prepared | DeliverResult:
        """The provider says the recipient is gone for good: opt it out and, on a push channel,
        prepare the same step for the user's next live subscription there (the newest left) in
        the same transaction, so a retry after a crash resends to that one (`_resend_in`). The
        failure as before (the step may fall back to another channel) when there is none, or
        when an earlier attempt may have been delivered (`_fail_in`: no second recipient then)."""
        assert prepared.opt_in_id is not None
        with self.store.session() as s:
            opted_out = opt_out_gone(s, prepared.opt_in_id)
            send = s.get(Send, req.send_key)
            if next_one and may_hand_over(req.channel, prepared.provider, send):
                assert send is not None
                following = self._next_recipient_in(s, req, send)
                if following is not None:
                    log.info("%s recipient gone, sending %s to the user's next opt-in", req.channel, req.send_key)
                    return following
            return self._fail_in(
                s, req, prepared.step_name, err.message, err.status, err.body, fallback=True, opted_out=opted_out,
                answer=answer_of(err),
            )  # fmt: skip

    def _next_recipient_in(self, s: Session, req: DeliverRequest, send: Send) -> _Prepared | None:
        """The send composed again for the user's newest opt-in still live on its channel (the
        gone one was just opted out), its content kept for retries; None when there is none."""
        integration = s.get(Integration, req.integration_id)
        user = canonical_user(s, req.user_id)
        if integration is None or user is None:
            return None
        try:
            composed = self._compose(s, req, integration, user, StepReads(), issued=send.created_at)
        except MissingRequired:
            return None
        content, step_name, _, opt_in_id = composed
        if content is None:
            return None
        send.message_enc = content.seal(self.secrets)
        send.updated_at = now_utc()
        s.add(send)
        provider = self.providers.for_kind(integration.kind)
        message = self._outbound(req, integration, content)
        return _Prepared(message, provider, send.possible_duplicate, step_name, opt_in_id, integration.updated_at)

    def _fail(
        self,
        req: DeliverRequest,
        step_name: str,
        reason: str,
        status: int | None,
        body: str,
        gone_opt_in: int | None = None,
        *,
        answer: str | None = None,
    ) -> DeliverResult:
        with self.store.session() as s:
            opted_out = gone_opt_in is not None and opt_out_gone(s, gone_opt_in)
            return self._fail_in(
                s, req, step_name, reason, status, body, fallback=True, opted_out=opted_out, answer=answer
            )

    def _fail_in(
        self,
        s: Session,
        req: DeliverRequest,
        step_name: str,
        reason: str,
        status: int | None,
        body: str,
        *,
        fallback: bool,
        outcome: str = "failed",
        opted_out: bool = False,
        answer: str | None = None,
    ) -> DeliverResult:
        """Record the send's final failure (or skip); `answer`: how the log line names the provider's
        answer (`provider_retry.answer_of`; default: the status, if any)."""
        send = s.get(Send, req.send_key)
        previous: str | None = None
        # An earlier attempt of this send may have been delivered (its answer was lost, and the
        # provider does not de-duplicate by our key): a refusal now does not say it was not. No
        # other channel is tried (the user would get both) and its cap slot stays taken. This
        # attempt marked the send in flight itself: only the flag tells of an earlier one.
        maybe_delivered = sends.maybe_delivered(send, attempt_running=True)
        if maybe_delivered:
            reason, fallback = f"{reason} ({sends.MAYBE_DELIVERED})", False
        if send is not None:
            previous, send.status = send.status, "failed" if outcome == "failed" else outcome
            send.message_enc = None  # final: no retry needs the content any more
            send.provider_status = status
            send.provider_response = (reason + (f" | {body}" if body and body not in reason else ""))[:2000]
            send.updated_at = now_utc()
            s.add(send)
        if not maybe_delivered:
            reservations.release(s, req.send_key)
        decisions.record(
            s,
            key=f"{req.send_key}:outcome",
            journey_id=req.journey_id,
            section_id=req.section_id,
            user_id=req.user_id,
            step_index=req.step_index,
            step_name=step_name,
            outcome=outcome,
            reason=reason[:200],
            channel=req.channel,
            at=req.as_of,
            detail={
                "provider_status": status,
                **({"opted_out": PROVIDER_OPT_OUT} if opted_out else {}),
                **({"possible_duplicate": True} if maybe_delivered else {}),
            },
        )
        if outcome == "failed" and previous != "failed":  # a skip is no failure; a record repeated is not logged again
            log_failed(s, req.send_key, reason, status=status, answer=answer)
        if send is not None:  # last: see `_accept`
            report_rollup.count_send(s, send, previous, opted_out=opted_out)
        return DeliverResult(status="failed", reason=reason[:200], provider_status=status,
                             possible_duplicate=maybe_delivered, fallback_allowed=fallback)  # fmt: skip

    def _accept(self, req: DeliverRequest, prepared: _Prepared, response: ProviderResponse) -> None:
        with self.store.session() as s:
            accepted = sends.accept(
                s, req.send_key, response.status, response.message_id, kept_answer(response.body), now_utc(),
                settled=prepared.provider.honours_idempotency_key,
            )
            assert accepted is not None
            # The last step's send also ends the journey: its finish shares this transaction.
            journey_rows.mark_sent(s, req.journey_id, req.as_of, completes=req.end_journey)
            decisions.record(
                s,
                key=f"{req.send_key}:outcome",
                journey_id=req.journey_id,
                section_id=req.section_id,
                user_id=req.user_id,
                step_index=req.step_index,
                step_name=prepared.step_name,
                outcome="sent",
                channel=req.channel,
                at=req.as_of,
                detail={"provider_status": response.status, "possible_duplicate": accepted.possible_duplicate},
            )
            # Last before the commit: the campaign's counters for the hour are rows every send
            # updates, locked until the commit; nothing else of the transaction waits under them.
            report_rollup.count_sent(s, accepted.message, accepted.previous_status)


def issue_time(as_of: datetime, now: datetime, user: User | None) -> datetime:
    """When a new send is issued: its `created_at` and the issue time its tracking links carry.

    The journey's time (`as_of`), except for a test user: their journey skips its waits, so its
    clock runs days ahead of real time, and their links would outlive REJOIN_LINK_TTL (and the
    send would be dated in the future). They get the wall clock of the first attempt instead.
    Either way it is recorded with the send, and a retry reads it back, so every attempt mints
    the same links. Real users keep `as_of` (which is real time for them), so their report
    cohorts compare a send with the journey's trigger on one clock.
    """
    return min(as_of, now) if user is not None and user.is_test else as_of


def trigger_items(
    s: Session, section_id: str, user: User, campaign_type: str, trigger_skus: list[str]
) -> list[dict[str, Any]]:
    """Trigger items: the cart as it is now for cart campaigns, else the triggering products."""
    if campaign_type == "cart_abandonment":
        cart = [CartItem.model_validate(i) for i in user.cart]
        skus = [i.sku for i in cart]
    else:
        cart, skus = [], list(trigger_skus)
    if not skus:
        return []
    catalog = _catalog(s, section_id, skus)
    by_sku = {i.sku: i for i in cart}
    return [_public(product_record(sku, catalog, by_sku.get(sku))) for sku in skus]


# Prepared once: every cart message loads its items (docs/performance.md).
_PRODUCTS = select(Product).where(
    col(Product.section_id) == bindparam("section_id"), col(Product.sku).in_(bindparam("skus", expanding=True))
)


def _catalog(s: Session, section_id: str, skus: list[str]) -> dict[str, dict[str, Any]]:
    """The section's product records of these SKUs, by SKU (missing ones left out)."""
    rows = s.execute(_PRODUCTS, {"section_id": section_id, "skus": skus}).scalars()
    return {p.sku: p.model_dump(exclude={"section_id", "updated_at"}) for p in rows}


def make_linker(
    signer: Signer | None,
    public_url: str,
    s: Session,
    section_id: str,
    send_key: str,
    user_id: str,
    channel: str,
    as_of: datetime,
) -> Linker | None:
    """The tracking-link minter for one send; SMS links become stored short codes.

    `as_of`: the send's issue time (its `created_at`, `issue_time`), which the links carry."""
    if signer is None or not public_url:
        return None
    # Links carry the section (fallback page) and the send's issue time (lifetime), both fixed
    # by the send's first attempt, so a retried delivery mints the very same links.
    linker = Linker(signer, public_url, send_key, user_id, section_id=section_id, issued=as_of)
    if channel == "sms":

        def shorten(target: str) -> str:
            code = signer.short_code(send_key, target)
            s.merge(ShortLink(code=code, section_id=section_id, send_key=send_key,
                              user_id=user_id, target=target, created_at=as_of))  # fmt: skip
            return f"{public_url}/s/{code}"

        linker.shorten = shorten
    return linker


def unsubscribe_url(channel: str, linker: Linker | None) -> str | None:
    """The one-click unsubscribe URL of an email send (None for other channels, or without a link
    minter); the adapters that build the email put it in its List-Unsubscribe header."""
    return linker.unsubscribe_url() if channel == "email" and linker is not None else None


def compose_payload(
    s: Session,
    *,
    section_id: str,
    spec: CampaignSpec,
    variation: Variation,
    step_index: int,
    channel: str,
    user: User,
    identifier: str,
    items: list[dict[str, Any]],
    linker: Linker | None,
    as_of: datetime,
    native_email: bool = False,
) -> dict[str, Any]:
    """Render one step's message for one user (used by delivery and by the preview endpoint).

    `native_email`: Rejoin sends the email itself (SMTP), so it adds the open pixel and wraps
    every link by itself, whatever the campaign's `auto_tracking` says.
    """
    step = variation.steps[step_index]
    message = step.messages[channel]  # type: ignore[index]
    template = message.payload
    if message.template_id is not None:
        saved = s.get(MessageTemplate, message.template_id)
        template = saved.payload if saved is not None and saved.section_id == section_id else None
    ctx = RenderContext(
        user_identifier=identifier,
        campaign_name=spec.name,
        variation_name=variation.name,
        step_name=step.name,
        channel=channel,
        locale=user.locale,
        items=items,
        variables=variation.variables,
        user_attributes=user.attributes,
        linker=linker,
        auto_tracking=spec.settings.auto_tracking or native_email,
    )
    # Load only the feed data the template refers to (product rows, recommendations).
    refs = refs_in(template)
    skus = sorted({r.args[0] for r in refs if r.kind == "product"})
    if skus:
        catalog = _catalog(s, section_id, skus)
        ctx.products = {sku: _public(product_record(sku, catalog)) for sku in catalog}
    strategies = {r.args[0] for r in refs if r.kind == "reco"}
    if strategies:
        ctx.recommendations = recommendations.load(s, section_id, items, as_of, strategies)
    return render_payload(template, ctx)


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """Item fields for templates (drop the duplicate category alias)."""
    return {k: v for k, v in record.items() if k != "category"}
