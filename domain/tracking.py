"""Tracking links and pixels: signed first-party tokens, short codes, bot rules. Pure, no I/O.

A click token carries (send key, user id, target URL) and an HMAC-SHA256 over exactly those
bytes, truncated to 128 bits; the redirector follows only targets it signed itself, so it is
never an open redirect. The key is derived from the deployment's secret keys (the first signs,
all verify: rotating `REJOIN_SECRET_KEY` keeps old links working while the old key is listed).
No PII travels in a link: users are opaque `usr_…` ids.

Links carry their section and issue time (signed): a link older than the deployment's link
lifetime (`REJOIN_LINK_TTL`) no longer redirects or counts, and any dead link (expired,
tampered, unknown short code) is sent to the section's fallback page instead (api/routes/tracking.py).
An unsubscribe link (`/t/u/<token>`, kind `u`) carries the same signed (send key, user id,
section, issue time) and no target: it opts the user out of email in the section
(api/routes/tracking.py). It lives as long as click links (`REJOIN_LINK_TTL`).
The legacy Reconnect `tremclk?...&targetUrl=` shape is parsed here too (`parse_legacy_click`):
its target is unsigned, so it is only followed to hosts the section lists (`host_allowed`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from publicsuffixlist import PublicSuffixList

SIG_BYTES = 16  # 128-bit truncated HMAC
UNSUBSCRIBE = "u"  # the token kind of unsubscribe links (clicks "c", pixels "o", push "p", reports "r")
SHORT_CODE_LEN = 10  # base62, ~59 bits, derived from a keyed HMAC: not guessable, not sequential
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BOT_CLICK_DELAY = timedelta(seconds=1)
# A hit on a send the provider has not accepted yet (its call still running, or being retried) is a
# machine reading the message on its way: a gateway scanning links before accepting the mail, a
# vendor's preview. Within this long of the send's last attempt; later, a send still `in_flight`
# may be one whose acceptance was never recorded (a worker killed after the call), read by a person.
UNACCEPTED_HIT_WINDOW = timedelta(minutes=2)
# Link scanners and prefetchers that follow links or load images without a human.
SCANNER_AGENTS = re.compile(
    # "bot" only as a bot's token, never inside a word: a CUBOT phone ("Android 10; CUBOT_X30") is
    # a person. Bots name themselves "bot" alone or as the end of a product token: versioned
    # ("Googlebot/2.1"), hyphenated ("AdsBot-Google", "Slackbot-LinkExpanding", "Google-Bot") or
    # closing a comment item ("PetalBot;", "(compatible; Cliqzbot)"); Slack's bare "Slackbot 1.0".
    r"\bbot\b|bot(?:/|-|;|\))|slackbot|"
    r"crawl|spider|preview|scanner|barracuda|mimecast|proofpoint|safe ?links|symantec|"
    r"trendmicro|forcepoint|ironport|python-requests|curl/|wget|headless|phantomjs|slurp|"
    # HTTP libraries: a person follows a link in a browser or a mail app, never through these
    r"go-http-client|java/|libwww-perl|axios/|node-fetch|aiohttp|httpx|apache-httpclient",
    re.IGNORECASE,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(secret: str) -> bytes:
    """A key used only for tracking links, so a leaked link key says nothing about encryption keys."""
    return hmac.new(secret.encode(), b"rejoin/tracking/v1", hashlib.sha256).digest()


def _body_data(body: str) -> dict[str, Any] | None:
    """A token body's JSON object, or None when it is not one."""
    try:
        data = json.loads(_unb64(body))
    except (ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


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
        return _body_data(body)

    @staticmethod
    def unverified(token: str) -> dict[str, Any] | None:
        """The token's data WITHOUT checking the signature: only to pick which section's fallback
        page a dead link shows (a choice among pages sections configured, never the target)."""
        body = token.partition(".")[0]
        if not body or len(token) > 8192:
            return None
        return _body_data(body)

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


# Apple Mail Privacy Protection loads every remote image of a message through Apple's proxy when
# the message is delivered, whether or not anyone reads it, and names itself only "Mozilla/5.0".
# No mail app or browser a person opens mail in sends that token alone (they add platform and
# engine tokens), so such an open is the proxy's prefetch, not a reader.
PRIVACY_PROXY_AGENT = "Mozilla/5.0"


def privacy_proxy(*, method: str, kind: str, user_agent: str | None) -> bool:
    """An open (pixel GET) by a mail privacy proxy prefetching images (Apple MPP)."""
    return kind == "impression" and method.upper() == "GET" and (user_agent or "").strip() == PRIVACY_PROXY_AGENT


def bot_reason(
    *, method: str, user_agent: str | None, at: datetime, sent_at: datetime | None, kind: str = "click",
    accepted: bool = True,
) -> str | None:
    """Why a hit is not a human one (None: counted). Used for clicks and impressions alike;
    `kind` ("click" or "impression") only matters for privacy-proxy prefetches, which are opens.
    `sent_at`: when the provider accepted the send, or, not `accepted` yet, its last attempt."""
    if method.upper() == "HEAD":
        return "head_request"
    # Every browser and mail app names itself; a GET without a User-Agent is a script or a
    # scanner. (Push engagements arrive by POST from the shop's app or backend, often without one.)
    if method.upper() == "GET" and not (user_agent or "").strip():
        return "no_user_agent"
    if privacy_proxy(method=method, kind=kind, user_agent=user_agent):
        return "privacy_proxy"
    if user_agent and SCANNER_AGENTS.search(user_agent):
        return "scanner_user_agent"
    if sent_at is not None and not accepted and at - sent_at < UNACCEPTED_HIT_WINDOW:
        return "before_accepted"
    if sent_at is not None and at - sent_at < BOT_CLICK_DELAY:
        return "too_fast_after_send"
    return None


def issued_at(data: dict[str, Any]) -> datetime | None:
    """When a signed link was minted (`i`, unix seconds); None for links minted before links carried it."""
    i = data.get("i")
    if isinstance(i, bool) or not isinstance(i, int):
        return None
    try:
        return datetime.fromtimestamp(i, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def expired(issued: datetime | None, now: datetime, ttl: timedelta) -> bool:
    """A link older than the lifetime is dead. Unknown issue time: not expired (the caller
    falls back to the send's time for links minted before links carried one)."""
    return issued is not None and now - issued > ttl


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def valid_domain(domain: str) -> bool:
    """A bare host name (`shop.example`): no scheme, port, path, wildcard or credentials."""
    return bool(_HOSTNAME.match(domain))


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # The list bundled with the package (ICANN and private suffixes), read once: no network.
    return PublicSuffixList()


def link_domain_problem(domain: str) -> str | None:
    """Why `domain` (a valid host name) cannot be a legacy link domain, or None if it can. A public
    suffix (`com`, `co.uk`, `github.io`) would let an unsigned `tremclk` link redirect to any site
    registered under it (an open redirect); an IP literal names no site of the shop's, and an
    all-digit last label is no registrable name either."""
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        pass
    else:
        return "is an IP address: list the shop's host names"
    if domain.rsplit(".", 1)[-1].isdigit():
        return "is not a host name under a top-level domain (an IP address?)"
    if "." not in domain:
        # A single label (`example`, `0x7f000001`, `1e100`) names no registrable site: calling it a
        # public suffix (what the list's wildcard rule makes of it) misleads.
        return "is not a registrable domain name (one label, no top-level domain): list the shop's own domain, e.g. shop.example"
    if _public_suffixes().is_public(domain):
        return "is a public suffix (anyone can register a site under it): list the shop's own domain, e.g. shop.example"
    return None


def host_allowed(url: str, domains: Sequence[str]) -> bool:
    """The URL is a safe target whose host is one of `domains` or a subdomain of one. A listed
    domain that is a public suffix or an IP (stored before sections refused them) allows nothing."""
    if not safe_target(url):
        return False
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    listed = [d for d in (x.lower() for x in domains) if d and link_domain_problem(d) is None]
    return any(host == d or host.endswith("." + d) for d in listed)


@dataclass(frozen=True)
class LegacyClick:
    """A Reconnect-format click (`/tremclk?cuid=…&sec=…&expId=…&targetUrl=…`), unsigned.

    Only `sec` (section), `expId` (campaign), `cuid`/`cuidType` (recipient) and `targetUrl` are
    used; `expVer`, `expVisitId`, `mech`, `smech`, `va` and the parent `p…` fields have no
    Rejoin counterpart and are ignored.
    """

    section: str
    campaign: str
    cuid: str
    cuid_type: str
    target: str


_TARGET_PARAM = re.compile(r"(?:^|&)targetUrl=", re.IGNORECASE)


def parse_legacy_click(query: str) -> LegacyClick:
    """Parse the raw query string. `targetUrl` is the last parameter and everything after it is
    the destination: URL-encoded per the docs (decoded once), or written plain as in the docs'
    JSON sample, where its own `?`/`&` belong to it and must not be split off."""
    m = _TARGET_PARAM.search(query)
    head, raw = (query[: m.start()], query[m.end() :]) if m else (query, "")
    target = unquote(raw) if raw.lower().startswith(("http%3a", "https%3a")) else raw
    params = parse_qs(head, keep_blank_values=True)

    def one(name: str) -> str:
        return (params.get(name) or [""])[0].strip()[:256]

    return LegacyClick(one("sec"), one("expId"), one("cuid"), one("cuidType"), target)


@dataclass
class Linker:
    """Mints the tracking URLs of one send. `shorten` (SMS) turns a target into a short link."""

    signer: Signer
    public_url: str
    send_key: str  # "" for previews: links redirect but record nothing
    user_id: str
    shorten: Callable[[str], str] | None = None
    minted: list[str] = field(default_factory=list)
    section_id: str = ""  # which section's fallback page a dead link shows
    # The send's issue time, recorded with it at its first attempt (so retries mint identical
    # links): the journey's time, or real time for a test user (activities.delivery.issue_time).
    issued: datetime | None = None

    def _data(self, **more: str) -> dict[str, Any]:
        data: dict[str, Any] = {"k": self.send_key, "u": self.user_id, **more}
        if self.section_id:
            data["s"] = self.section_id
        if self.issued is not None:
            data["i"] = int(self.issued.timestamp())
        return data

    def click(self, target: str) -> str:
        if not safe_target(target):
            return target
        if self.shorten is not None:
            return self.shorten(target)
        url = f"{self.public_url}/t/c/{self.signer.sign('c', self._data(t=target))}"
        self.minted.append(url)
        return url

    def pixel_url(self) -> str:
        return f"{self.public_url}/t/o/{self.signer.sign('o', self._data())}.gif"

    def push_token(self) -> str:
        return self.signer.sign("p", self._data())

    def unsubscribe_url(self) -> str:
        """The send's one-click unsubscribe link (RFC 8058). Signed like clicks, so it cannot be
        forged or pointed at another user, and like them it names only the opaque user id."""
        return f"{self.public_url}/t/u/{self.signer.sign(UNSUBSCRIBE, self._data())}"
