"""Where an upstream may send us: a redirect (or a token realm) names an address the upstream
chose, so a compromised or misconfigured upstream could make the mirror fetch from the cloud
metadata service or from services on the mirror's own host and hand the answer to a client.
Refused: the configured networks (link-local and the EC2 IPv6 metadata address by default),
and loopback unless the upstream itself is on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from mirror.config import UpstreamConfig

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128"))


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def on_loopback(url: str) -> bool:
    """The upstream's own host is this machine (by address literal or `localhost`)."""
    host = urlsplit(url).hostname or ""
    ip = _literal(host)
    return ip.is_loopback if ip is not None else host.lower() in ("localhost", "localhost.")


class RedirectPolicy:
    def __init__(self, upstream_url: str, blocked: Iterable[str],
                 to_loopback: bool | None) -> None:
        allow_loopback = on_loopback(upstream_url) if to_loopback is None else to_loopback
        self.blocked: tuple[Network, ...] = tuple(
            ipaddress.ip_network(b, strict=False) for b in blocked) + (
            () if allow_loopback else LOOPBACK)

    @classmethod
    def of(cls, config: UpstreamConfig) -> RedirectPolicy:
        return cls(config.url, config.redirect_blocklist, config.redirect_to_loopback)

    def refuses(self, ip: Address) -> bool:
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return any(a in net for a in (ip, mapped) if a is not None
                   for net in self.blocked if a.version == net.version)

    async def refused(self, url: str) -> str | None:
        """The refused address `url` leads to, or None. A name is resolved first; one that
        does not resolve is left to the request, which fails the same way."""
        host = urlsplit(url).hostname
        if not host or not self.blocked:
            return None
        ip = _literal(host)
        if ip is not None:
            return str(ip) if self.refuses(ip) else None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                                 type=socket.SOCK_STREAM)
        except OSError:
            return None
        for info in infos:
            addr = _literal(str(info[4][0]).split("%", 1)[0])
            if addr is not None and self.refuses(addr):
                return f"{host} ({addr})"
        return None
