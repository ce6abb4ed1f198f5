"""What adapters share in one process: the guarded HTTP caller and the token cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from providers.http import HttpCaller
from providers.oauth import TokenCache


@dataclass
class AdapterContext:
    caller: HttpCaller
    tokens: TokenCache = field(default_factory=TokenCache)
    # HTTP/2-capable caller (APNs requires HTTP/2; ALPN negotiates it over TLS). Falls back to `caller`.
    http2: HttpCaller | None = None

    @property
    def h2_caller(self) -> HttpCaller:
        return self.http2 or self.caller
