"""What adapters share in one process: the guarded HTTP caller and the token cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from providers.http import HttpCaller
from providers.oauth import TokenCache


@dataclass
class AdapterContext:
    caller: HttpCaller
    tokens: TokenCache = field(default_factory=TokenCache)
