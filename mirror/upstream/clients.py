"""The configured upstreams by name, or none at all when the mirror is offline."""

from __future__ import annotations

from collections.abc import Mapping

from mirror.oci.errors import NameUnknown
from mirror.upstream.client import UpstreamClient


class Upstreams:
    def __init__(self, clients: Mapping[str, UpstreamClient], offline: bool) -> None:
        self.clients = clients
        self.offline = offline

    def client(self, upstream: str) -> UpstreamClient | None:
        """The client for `upstream`; None when offline. An unknown name is a 404 NAME_UNKNOWN:
        the mirror is never an open proxy."""
        if self.offline:
            return None
        c = self.clients.get(upstream)
        if c is None:
            raise NameUnknown(f"registry {upstream!r} is not configured on this mirror")
        return c
