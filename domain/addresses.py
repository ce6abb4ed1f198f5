"""Internet addresses by their spelling alone: which host strings denote an address, in any
notation a resolver accepts, and which addresses are not public destinations.

Pure rules, no DNS and no I/O: the outbound URL guard (`providers/url_guard.py`) applies them to
every address a name resolves to; opt-in validation (`domain/identifiers.py`) applies them to a
Web Push endpoint's host as written.
"""

from __future__ import annotations

import ipaddress
import socket

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_internal(ip: IP) -> bool:
    """Not a public destination: private, loopback, link-local (cloud metadata), multicast, reserved,
    unspecified, or a public-looking IPv6 form that embeds such an IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return is_internal(embedded)
        if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 well-known prefix
            return is_internal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def literal_ip(host: str) -> IP | None:
    """The address a host string denotes by itself, in any notation a resolver would accept."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:  # inet_aton: 127.1, 2130706433, 0x7f000001, 0177.0.0.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def local_literal(host: str) -> str | None:
    """Why `host` is not a public destination by its spelling alone, or None: a literal address the
    guard refuses (any notation) or a `localhost` name. No DNS: for checks on a hot path (a shopper's
    Web Push endpoint at opt-in); a name is checked, and the connection pinned, when it is called."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host} is a local host name"
    ip = literal_ip(name)
    if ip is not None and is_internal(ip):
        return f"{host} is not a public address ({ip})"
    return None
