"""Native email over SMTP, for teams without an ESP.

The payload gives `subject`, `html` and/or `text`; the sender is the configured address. The
connection goes to the address the SSRF guard checked (pinned), while STARTTLS / implicit TLS
verify the certificate against the configured host name. `Message-ID` is derived from the send
key, so a repeat after an unknown outcome carries the same id (mail stores and clients
de-duplicate on it) and the send key is in `X-Rejoin-Send-Key` for tracing.

A journey or broadcast email carries its one-click unsubscribe link (RFC 8058): `List-Unsubscribe:
<https://…/t/u/…>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, as Gmail and Yahoo
require of bulk senders (the link comes with the rendered payload: domain/render.py).
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from typing import Any, Literal

from pydantic import Field

from domain.email_address import is_email
from providers.base import ConfigurationError, OutboundMessage, ProviderError, ProviderResponse
from providers.context import AdapterContext
from providers.preset import PresetConfig, text_of


class SmtpConfig(PresetConfig):
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = Field(None, max_length=320)
    password: str | None = Field(None, max_length=1000)
    from_email: str = Field(min_length=3, max_length=320)
    from_name: str | None = Field(None, max_length=200)
    timeout: float = Field(20.0, gt=0, le=120)


class _PinnedSMTP(smtplib.SMTP):
    """SMTP that connects to a checked IP but keeps the host name for TLS verification."""

    def __init__(self, ip: str, **kwargs: Any) -> None:
        self._pinned_ip = ip
        super().__init__(**kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._pinned_ip, port), timeout, self.source_address)


class _PinnedSMTPS(_PinnedSMTP):
    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = super()._get_socket(host, port, timeout)
        return ssl.create_default_context().wrap_socket(raw, server_hostname=getattr(self, "_host", host))


def one_line(value: str) -> str:
    """`value` fit for a header: every line break (CR, LF, and the other separators `splitlines`
    knows) and NUL becomes a space. Headers are built from data (a subject naming a product, a
    recipient): a break there would add a header (`Bcc:`), and the email library refuses it with a
    ValueError that would fail every send of that message."""
    return " ".join(value.replace("\0", " ").splitlines())


# The library's default, except that a header stored raw (`set_raw`) is sent as written: headers
# set the usual way are parsed header objects, folded as always.
POLICY = email.policy.default.clone(refold_source="none")


def single_recipient(recipient: str) -> str:
    """`recipient` when it is exactly one plain address, the envelope's only RCPT; else a permanent
    failure. Opt-ins take one plain address (`domain.email_address`), but a row stored before that
    may hold a list (`root,victim@evil.com`): read from `To:`, it was one RCPT per address."""
    address = recipient.strip()
    # parseaddr is what smtplib applies to a RCPT: it must give back the address as stored.
    if not is_email(address) or parseaddr(address) != ("", address):
        raise ProviderError("the recipient is not exactly one plain email address", retryable=False)
    return address


def build_email(cfg: SmtpConfig, message: OutboundMessage) -> EmailMessage:
    payload = message.payload
    mail = EmailMessage(policy=POLICY)
    mail["Subject"] = one_line(str(payload.get("subject", message.step_name or "")))
    mail["From"] = formataddr((one_line(cfg.from_name or ""), one_line(cfg.from_email)))
    mail["To"] = single_recipient(message.recipient)
    mail["Date"] = formatdate(usegmt=True)
    digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:32]
    mail["Message-ID"] = f"<{digest}@{cfg.from_email.rpartition('@')[2] or 'rejoin'}>"
    mail["X-Rejoin-Send-Key"] = message.idempotency_key
    unsubscribe = message.unsubscribe_url
    if unsubscribe:
        # Stored as written and never refolded: the library folds a header word longer than a
        # line (the signed link is) into RFC 2047 encoded-words, which no mail app reads as a
        # URL. Every other header is still folded as usual (`POLICY`).
        mail.set_raw("List-Unsubscribe", f"<{one_line(unsubscribe)}>")
        mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    text = payload.get("text")
    html = payload.get("html")
    mail.set_content(str(text) if text else text_of(payload, "body"))
    if html:
        mail.add_alternative(str(html), subtype="html")
    return mail


class SmtpProvider:
    kind = "smtp"
    channels = ("email",)
    Config = SmtpConfig
    honours_idempotency_key = False

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def send(self, message: OutboundMessage) -> ProviderResponse:
        cfg = SmtpConfig.model_validate(message.config)
        recipient = single_recipient(message.recipient)  # before any connection: it fails for good
        ip = await self.ctx.caller.guard.resolve_host(cfg.host, cfg.port)
        try:
            mail = build_email(cfg, message)
        except ValueError as exc:
            # What data brings is made one line above; what is left is the configuration (a
            # from_email the library refuses), and it would fail the same way on every retry.
            raise ConfigurationError(f"the email could not be built ({type(exc).__name__}): check from_email") from None
        return await asyncio.to_thread(self._deliver, cfg, ip, mail, recipient)

    def _deliver(self, cfg: SmtpConfig, ip: str, mail: EmailMessage, recipient: str) -> ProviderResponse:
        cls = _PinnedSMTPS if cfg.security == "tls" else _PinnedSMTP
        try:
            with cls(ip, host=cfg.host, port=cfg.port, timeout=cfg.timeout) as smtp:
                if cfg.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if cfg.username and cfg.password:
                    smtp.login(cfg.username, cfg.password)
                # The envelope names the one recipient: never re-read from the To header.
                refused = smtp.send_message(mail, to_addrs=[recipient])
        except smtplib.SMTPAuthenticationError as exc:
            raise ConfigurationError(f"SMTP login refused ({exc.smtp_code})") from None
        except smtplib.SMTPResponseException as exc:
            # 4xx replies are transient by definition (RFC 5321), 5xx permanent.
            raise ProviderError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:300], retryable=400 <= exc.smtp_code < 500,
                                status=exc.smtp_code) from None  # fmt: skip
        except smtplib.SMTPRecipientsRefused as exc:
            raise ProviderError(f"SMTP refused the recipient: {list(exc.recipients.values())!r}"[:300],
                                retryable=False) from None  # fmt: skip
        except smtplib.SMTPServerDisconnected as exc:
            raise ProviderError(f"SMTP disconnected: {exc}", retryable=True, outcome_unknown=True) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ProviderError(f"SMTP connection error: {type(exc).__name__}", retryable=True) from None
        if refused:
            raise ProviderError(f"SMTP refused the recipient: {refused!r}"[:300], retryable=False)
        return ProviderResponse(status=250, body="queued", message_id=str(mail["Message-ID"]))
