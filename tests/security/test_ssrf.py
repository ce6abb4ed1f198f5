"""SSRF guard: provider URLs that reach internal addresses are refused in every spelling."""

from __future__ import annotations

import pytest

from providers.base import ConfigurationError
from providers.url_guard import check_url

INTERNAL = [
    "http://127.0.0.1/x",
    "http://localhost:8080/x",
    "http://2130706433/x",  # 127.0.0.1 as one decimal number
    "http://0x7f.0.0.1/x",  # hexadecimal octet
    "http://0177.0.0.1/x",  # octal octet
    "http://127.1/x",  # short form
    "http://0/x",  # 0.0.0.0
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://10.0.0.5/x",
    "http://192.168.1.1/x",
    "http://[::1]/x",
    "http://[::ffff:127.0.0.1]/x",  # IPv4-mapped IPv6
    "http://[::ffff:7f00:1]/x",
    "http://[64:ff9b::a9fe:a9fe]/x",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/x",  # 6to4 of 127.0.0.1
    "http://[fe80::1]/x",
    "http://[fc00::1]/x",
]


@pytest.mark.parametrize("url", INTERNAL)
async def test_internal_addresses_are_refused_in_any_notation(url: str) -> None:
    """Loopback, private, link-local and metadata addresses are refused however they are written."""
    with pytest.raises(ConfigurationError):
        await check_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http://user:pw@example.com/", "file:///etc/passwd", "http:///x"])
async def test_malformed_or_credentialed_urls_are_refused(url: str) -> None:
    """Only http(s) URLs with a host and no embedded credentials are accepted."""
    with pytest.raises(ConfigurationError):
        await check_url(url, allow_private=False)


async def test_public_address_is_allowed() -> None:
    """A public literal address passes the guard (no DNS needed)."""
    await check_url("https://93.184.215.14/send", allow_private=False)
