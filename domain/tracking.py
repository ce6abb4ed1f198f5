"""Tracking links and pixels: signed first-party tokens, short codes, bot rules. Pure, no I/O.

A click token carries (send key, user id, target URL) and an HMAC-SHA256 over exactly those
bytes, truncated to 128 bits; the redirector follows only targets it signed itself, so it is
never an open redirect. The key is derived from the deployment's secret keys (the first signs,
all verify: rotating `REJOIN_SECRET_KEY` keeps old links working while the old key is listed).
No PII travels in a link: users are opaque `usr_…` ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

SIG_BYTES = 16  # 128-bit truncated HMAC
SHORT_CODE_LEN = 10  # base62, ~59 bits, derived from a keyed HMAC: not guessable, not sequential
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BOT_CLICK_DELAY = timedelta(seconds=1)
# Link scanners and prefetchers that follow links or load images without a human.
SCANNER_AGENTS = re.compile(
    r"bot|crawl|spider|preview|scanner|barracuda|mimecast|proofpoint|safelinks|symantec|"
    r"trendmicro|forcepoint|ironport|python-requests|curl/|wget|headless|phantomjs|slurp",
    re.IGNORECASE,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(secret: str) -> bytes:
    """A key used only for tracking links, so a leaked link key says nothing about encryption keys."""
    return hmac.new(secret.encode(), b"rejoin/tracking/v1", hashlib.sha256).digest()


class Signer:
    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("at least one secret key is needed to sign tracking links")
        self._keys = [derive_key(s) for s in secrets]

    def _mac(self, key: bytes, kind: str, body: str) -> bytes:
        return hmac.new(key, f"{kind}.{body}".encode(), hashlib.sha256).digest()[:SIG_BYTES]

    def sign(self, kind: str, data: dict[str, Any]) -> str:
        body = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(self._mac(self._keys[0], kind, body))}"

    def verify(self, kind: str, token: str) -> dict[str, Any] | None:
        """The signed data, or None when the token was not minted by us (any key) for `kind`."""
        body, _, sig = token.partition(".")
        if not body or not sig or len(token) > 8192:
            return None
        try:
            given = _unb64(sig)
        except (ValueError, TypeError):
            return None
        if not any(hmac.compare_digest(self._mac(k, kind, body), given) for k in self._keys):
            return None
        try:
            data = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        return data if isinstance(data, dict) else None

    def short_code(self, send_key: str, target: str) -> str:
        """Deterministic per (send, target) so a retried delivery reuses its codes."""
        digest = hmac.new(self._keys[0], f"short|{send_key}|{target}".encode(), hashlib.sha256).digest()
        n = int.from_bytes(digest, "big")
        out = []
        for _ in range(SHORT_CODE_LEN):
            n, r = divmod(n, 62)
            out.append(BASE62[r])
        return "".join(out)


def safe_target(url: str) -> bool:
    """Only absolute http(s) URLs without credentials, backslashes or control characters."""
    if not url or len(url) > 4096 or "\\" in url or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def bot_reason(*, method: str, user_agent: str | None, at: datetime, sent_at: datetime | None) -> str | None:
    """Why a hit is not a human one (None: counted). Used for clicks and impressions alike."""
    if method.upper() == "HEAD":
        return "head_request"
    if user_agent and SCANNER_AGENTS.search(user_agent):
        return "scanner_user_agent"
    if sent_at is not None and at - sent_at < BOT_CLICK_DELAY:
        return "too_fast_after_send"
    return None


@dataclass
class Linker:
    """Mints the tracking URLs of one send. `shorten` (SMS) turns a target into a short link."""

    signer: Signer
    public_url: str
    send_key: str  # "" for previews: links redirect but record nothing
    user_id: str
    shorten: Callable[[str], str] | None = None
    minted: list[str] = field(default_factory=list)

    def click(self, target: str) -> str:
        if not safe_target(target):
            return target
        if self.shorten is not None:
            return self.shorten(target)
        token = self.signer.sign("c", {"k": self.send_key, "u": self.user_id, "t": target})
        url = f"{self.public_url}/t/c/{token}"
        self.minted.append(url)
        return url

    def pixel_url(self) -> str:
        return f"{self.public_url}/t/o/{self.signer.sign('o', {'k': self.send_key, 'u': self.user_id})}.gif"

    def push_token(self) -> str:
        return self.signer.sign("p", {"k": self.send_key, "u": self.user_id})
