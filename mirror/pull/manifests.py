"""Manifests by digest: memory, then the hot tier, then the cold tier, then one upstream GET
(single flight). A body is kept or served only once it hashed to its digest."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cachetools import LRUCache

from mirror.fetch.coalesce import SingleFlight
from mirror.fetch.peer_fetch import PeerClient
from mirror.fetch.shared import SharedDownloads
from mirror.observe.metrics import Metrics
from mirror.oci.errors import (
    ManifestUnknown,
    ManifestUnsupported,
    UpstreamRejected,
    VerificationError,
)
from mirror.oci.models import SCHEMA1_TYPES, Digest, manifest_media_type
from mirror.store.disk import DiskTier
from mirror.store.tiered import TieredStore
from mirror.upstream.client import Document, UpstreamClient

log = logging.getLogger("mirror.pull.manifests")

Result = Literal["hit", "miss", "stale", "coalesced"]
ClientFor = Callable[[str], UpstreamClient | None]  # None: offline


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    manifest: Manifest
    result: Result


class ManifestStore:
    def __init__(self, tier: DiskTier, metrics: Metrics, memory: int,
                 tiers: TieredStore | None = None,
                 workers: SharedDownloads | None = None,
                 peers: PeerClient | None = None) -> None:
        self.tier = tier
        self.metrics = metrics
        self.tiers = tiers  # cold tier: manifests every node stored
        # server.workers > 1: another process may have stored what this one's memory lacks.
        self.workers = workers
        self.peers = peers  # cluster: the digest's owner is asked before the upstream
        self._memory: LRUCache[str, Manifest] = LRUCache(
            maxsize=memory, getsizeof=lambda m: len(m.body) + 200)
        self._by_digest: SingleFlight[str, Manifest] = SingleFlight()

    def cached(self, digest: Digest) -> Manifest | None:
        """From memory or the hot tier, verified; None when neither has it."""
        key = str(digest)
        m = self._memory.get(key)
        if m is not None:
            self.tier.touch(digest)
            return m
        entry = self.tier.entry(digest)
        if entry is None:
            return self._from_other_worker(digest) if self.workers is not None else None
        body = self.tier.read_bytes_sync(digest)  # small, page-cached; memory holds the hot ones
        if body is None or Digest.of(body, digest.algorithm) != digest:
            return None
        m = Manifest(digest, entry.media_type or manifest_media_type(body, None), body)
        self._memory[key] = m
        self.tier.touch(digest)
        return m

    def _from_other_worker(self, digest: Digest) -> Manifest | None:
        assert self.workers is not None
        body = self.tier.read_bytes_sync(digest)
        if body is None or Digest.of(body, digest.algorithm) != digest:
            return None
        recorded = self.workers.media_type(digest)  # the upstream's, as the storer saw it
        m = Manifest(digest, recorded or manifest_media_type(body, None), body)
        self.tier.learn(digest, len(body), m.media_type, is_manifest=True)
        self._memory[str(digest)] = m
        return m

    async def by_digest(self, client: UpstreamClient | None, repo: str,
                        digest: Digest, local: bool = False) -> ManifestAnswer:
        """`client` None: offline, only what some tier holds. `local`: a peer asks this node
        as the owner; no other peer is asked."""
        m = self.cached(digest)
        if m is not None:
            return ManifestAnswer(m, "hit")
        if self.tiers is not None and await self.tiers.manifest(digest) is not None:
            m = self.cached(digest)
            if m is not None:
                return ManifestAnswer(m, "hit")
        if client is None:
            raise ManifestUnknown(f"manifest {digest} is not cached and the mirror is offline")
        m, joined = await self._by_digest.run(
            str(digest), lambda: self._owner_or_fetch(client, repo, digest, local))
        if joined:
            self.metrics.coalesced.labels(client.name, "manifest").inc()
        return ManifestAnswer(m, "coalesced" if joined else "miss")

    async def _owner_or_fetch(self, client: UpstreamClient, repo: str, digest: Digest,
                              local: bool) -> Manifest:
        if self.peers is not None and not local:
            doc = await self.peers.document(str(digest), client.name, repo, str(digest))
            if doc is not None:
                got = Digest.of(doc.body, digest.algorithm)
                if got == digest:  # verified like an upstream's body
                    return await self.keep(digest, manifest_media_type(doc.body, doc.content_type),
                                           doc.body)
                self.metrics.verify_failures.labels("peer", "manifest").inc()
                log.warning("a peer's manifest for %s hashed to %s; asking upstream", digest, got)
        return await self.fetch(client, repo, str(digest), digest)

    async def fetch(self, client: UpstreamClient, repo: str, ref: str,
                    want: Digest | None) -> Manifest:
        """GET from upstream, verify (against `want`, or the upstream's Docker-Content-Digest
        for a tag), store. A 404 raises ManifestUnknown."""
        doc = await client.get_manifest(repo, ref)
        if doc.status == 404:
            raise ManifestUnknown(f"manifest {repo}:{ref} not found upstream")
        if doc.status != 200:
            raise UpstreamRejected(f"upstream {client.name} answered {doc.status} for manifest "
                                   f"{repo}:{ref}", doc.status)
        body = doc.body
        # Counted before verification: bytes that fail to verify still crossed the link.
        self.metrics.upstream_bytes.labels(client.name).inc(len(body))
        media_type = manifest_media_type(body, content_type(doc))
        if media_type in SCHEMA1_TYPES:
            # Old registries answer schema 1 whatever we accept. Its digest is over the payload
            # without the signatures: it can never verify, and a 502 would only be retried.
            raise ManifestUnsupported(
                f"{repo}:{ref} is a Docker schema 1 manifest on upstream {client.name}; schema 1 "
                "is deprecated and not served by this mirror: push the image again with a "
                "current client (Docker schema 2 or OCI)")
        if want is not None:
            digest = Digest.of(body, want.algorithm)
            if digest != want:
                self.metrics.verify_failures.labels(client.name, "manifest").inc()
                raise VerificationError(f"upstream manifest for {want} hashed to {digest}")
        else:
            digest = Digest.of(body)
            claimed = doc.headers.get("Docker-Content-Digest", "")
            if claimed.startswith("sha256:") and claimed != str(digest):
                self.metrics.verify_failures.labels(client.name, "manifest").inc()
                raise VerificationError(f"upstream said {claimed} for {repo}:{ref}, body hashes to "
                                        f"{digest}")
        return await self.keep(digest, media_type, body)

    async def keep(self, digest: Digest, media_type: str, body: bytes) -> Manifest:
        """Store a verified manifest (hot tier and memory)."""
        m = Manifest(digest, media_type, body)
        if self.tier.entry(digest) is None:
            try:
                await self.tier.put_bytes(digest, body, media_type, is_manifest=True)
            except OSError as e:
                # Disk full or I/O error: still answer from memory; the next miss refetches.
                self.metrics.cache_write_errors.labels(self.tier.name).inc()
                log.warning("could not store manifest %s: %s", digest, e.strerror or e)
        self._memory[str(digest)] = m
        return m


def content_type(doc: Document) -> str | None:
    ct = doc.headers.get("Content-Type")
    return ct.split(";", 1)[0].strip() if ct else None
