"""Outbound URL guard (SSRF): provider URLs may not reach internal addresses.

Loopback, private, link-local (cloud metadata), multicast, reserved and unspecified addresses
are refused unless the operator allows private targets (local development and tests do).
Every address a hostname resolves to is checked; IPv4 embedded in IPv6 is unwrapped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from providers.base import ConfigurationError


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return _forbidden(embedded)
        if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 well-known prefix
            return _forbidden(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def check_url_shape(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise ConfigurationError(f"URL scheme must be http or https: {parts.scheme or 'none'}")
    if not parts.hostname:
        raise ConfigurationError("URL has no host")
    if parts.username or parts.password:
        raise ConfigurationError("URL must not embed credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname, port


async def check_url(url: str, *, allow_private: bool) -> None:
    """Raise ConfigurationError when `url` may not be called."""
    host, port = check_url_shape(url)
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot resolve host {host}: {exc}") from exc
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if _forbidden(ip):
            raise ConfigurationError(f"refusing to call {host}: resolves to a non-public address ({ip})")
