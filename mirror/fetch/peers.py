"""The cluster's peer set: who the peers are (a list, or a DNS name re-resolved every few
seconds), which of them are down, who owns a key (rendezvous hashing over the live ones), and
the shared secret that peer requests carry."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from mirror.config import ClusterConfig
from mirror.fetch.rendezvous import ranked

log = logging.getLogger("mirror.fetch.peers")
PEER_SECRET_HEADER = "X-Mirror-Peer-Secret"


def address_url(scheme: str, address: str, port: int) -> str:
    """A peer's base URL from one resolved address (IPv6 in brackets)."""
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"


class PeerSet:
    def __init__(self, config: ClusterConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.self_url = config.self_url
        self._clock = clock
        self._members: tuple[str, ...] = tuple(sorted({config.self_url, *config.peers}))
        self._down: dict[str, tuple[float, str]] = {}  # peer -> (until, why)
        self._served: dict[str, int] = {}  # fetches a peer completed for this node

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    def set_members(self, urls: list[str]) -> None:
        members = tuple(sorted({self.self_url, *urls}))
        if members != self._members:
            log.info("cluster peers: %s", ", ".join(members))
        self._members = members

    def is_down(self, peer: str) -> bool:
        entry = self._down.get(peer)
        if entry is None:
            return False
        if entry[0] <= self._clock():
            del self._down[peer]
            return False
        return True

    def owners(self, key: str) -> list[str]:
        """The live members in hash order for `key`, up to and including this node: the peers
        to ask, in turn, before fetching ourselves."""
        order: list[str] = []
        for peer in ranked(key, self._members):
            if peer == self.self_url:
                order.append(peer)
                break
            if not self.is_down(peer):
                order.append(peer)
        return order

    def owner(self, key: str) -> str:
        return self.owners(key)[0]

    def mark_down(self, peer: str, why: str) -> None:
        if not self.is_down(peer):
            log.warning("peer %s is down for %.0fs: %s", peer, self.config.down_for, why)
        self._down[peer] = (self._clock() + self.config.down_for, why)

    def mark_up(self, peer: str) -> None:
        self._down.pop(peer, None)
        self._served[peer] = self._served.get(peer, 0) + 1

    def authorized(self, presented: str | None) -> bool:
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self.config.secret.reveal().encode())

    def headers(self) -> dict[str, str]:
        return {PEER_SECRET_HEADER: self.config.secret.reveal()}

    async def resolve(self) -> None:
        """cluster.peers as a DNS name: its A/AAAA records are the peers."""
        if self.config.dns is None:
            return
        u = urlsplit(self.config.dns)
        assert u.hostname is not None and u.port is not None
        infos = await asyncio.get_running_loop().getaddrinfo(
            u.hostname, u.port, type=socket.SOCK_STREAM)
        self.set_members([address_url(u.scheme, str(info[4][0]), u.port) for info in infos])

    async def run(self) -> None:
        """Re-resolve the DNS name every resolve_interval; a failed lookup keeps the last set."""
        while self.config.dns is not None:
            try:
                await self.resolve()
            except OSError as e:
                log.warning("cannot resolve the cluster's peers (%s): %s; keeping %d",
                            urlsplit(self.config.dns).hostname, e, len(self._members))
            await asyncio.sleep(self.config.resolve_interval)

    def status(self) -> list[dict[str, Any]]:
        now = self._clock()
        rows: list[dict[str, Any]] = []
        for peer in self._members:
            down = self._down.get(peer) if self.is_down(peer) else None
            state = "self" if peer == self.self_url else "down" if down else "up"
            rows.append({"url": peer, "state": state, "served": self._served.get(peer, 0),
                         **({"down_for": round(down[0] - now), "why": down[1]} if down else {})})
        return rows
