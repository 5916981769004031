"""Rendezvous (highest random weight) hashing: every node that knows the same peers orders them
the same way for a key, and a peer leaving moves only the keys it owned."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(peer: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{peer}\0{key}".encode()).digest()[:8], "big")


def ranked(key: str, peers: Iterable[str]) -> list[str]:
    """`peers` by their weight for `key`, the owner first (ties, which need a hash collision,
    broken by name so every node agrees)."""
    return sorted(set(peers), key=lambda p: (weight(p, key), p), reverse=True)
