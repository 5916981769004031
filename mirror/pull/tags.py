"""Tag resolution: a tag's digest is fresh for cache.tag_ttl, then revalidated with one HEAD
(Docker Hub does not count HEADs against the pull limit); on upstream failure a known digest is
served stale within cache.max_stale. One refresh per tag at a time (single flight)."""

from __future__ import annotations

import logging
import time

from mirror.config import CacheConfig
from mirror.fetch.coalesce import SingleFlight
from mirror.fetch.peer_fetch import PeerClient
from mirror.observe.metrics import Metrics
from mirror.oci.errors import (
    ManifestUnknown,
    MirrorError,
    TooManyRequests,
    UpstreamError,
    UpstreamRejected,
)
from mirror.oci.models import Digest, manifest_media_type
from mirror.pull.manifests import ClientFor, Manifest, ManifestAnswer, ManifestStore, Result
from mirror.store.index import Freshness, TagIndex, TagRecord, freshness
from mirror.store.shared_tags import SharedTags
from mirror.upstream.client import UpstreamClient

log = logging.getLogger("mirror.pull.tags")


class TagResolver:
    def __init__(self, cache: CacheConfig, tags: TagIndex, manifests: ManifestStore,
                 metrics: Metrics, client_for: ClientFor, shared: SharedTags | None = None,
                 multiprocess: bool = False, peers: PeerClient | None = None) -> None:
        self.cache = cache
        self.tags = tags
        self.manifests = manifests
        self.metrics = metrics
        self.client_for = client_for
        self.shared = shared  # tag records in the cold tier, shared by every node
        self.multiprocess = multiprocess  # another worker may have revalidated meanwhile
        # cluster: the owner of (registry, repository, tag) revalidates for every node, so the
        # cluster sends one HEAD per TTL; the others take its answer and its check time.
        self.peers = peers
        self._by_tag: SingleFlight[tuple[str, str, str], tuple[Manifest, Result]] = SingleFlight()

    def checked_at(self, upstream: str, repo: str, tag: str) -> float | None:
        rec = self.tags.get(upstream, repo, tag)
        return rec.checked_at if rec is not None else None

    async def resolve(self, upstream: str, repo: str, tag: str,
                      local: bool = False) -> ManifestAnswer:
        """`local`: a peer asks this node as the tag's owner; no other peer is asked."""
        rec = self.tags.get(upstream, repo, tag)
        if self.shared is not None:
            rec = await self.shared.recall(upstream, repo, tag, rec)
        now = time.time()
        if self.multiprocess and rec is not None and freshness(
                rec, now, self.cache.tag_ttl, None) is not Freshness.FRESH:
            rec = self.tags.reload(upstream, repo, tag)  # maybe revalidated by another worker
        if rec is not None:
            state = freshness(rec, now, self.cache.tag_ttl, self.cache.max_stale)
            if state is Freshness.FRESH:
                if rec.digest is None:
                    raise ManifestUnknown(f"manifest {repo}:{tag} not found upstream")
                m = self.manifests.cached(Digest.parse(rec.digest))
                if m is not None:
                    return ManifestAnswer(m, "hit")
        client = self.client_for(upstream)
        if client is None:  # offline: what we know, however old
            if rec is not None and rec.digest is not None:
                m = self.manifests.cached(Digest.parse(rec.digest))
                if m is not None:
                    return ManifestAnswer(m, "hit")
            raise ManifestUnknown(f"manifest {repo}:{tag} is not cached and the mirror is offline")
        (m, result), joined = await self._by_tag.run(
            (upstream, repo, tag), lambda: self._owner_or_refresh(client, repo, tag, rec, local))
        if joined:
            self.metrics.coalesced.labels(upstream, "manifest").inc()
            if result == "miss":
                result = "coalesced"
        return ManifestAnswer(m, result)

    async def _owner_or_refresh(self, client: UpstreamClient, repo: str, tag: str,
                                rec: TagRecord | None, local: bool) -> tuple[Manifest, Result]:
        if self.peers is not None and not local:
            try:
                doc = await self.peers.document(f"{client.name}/{repo}:{tag}", client.name,
                                                repo, tag)
            except ManifestUnknown:
                self.tags.put(client.name, repo, tag, TagRecord(None, None, None, time.time()))
                raise
            if doc is not None:
                digest = Digest.of(doc.body)
                if doc.digest == str(digest):  # the body is what the owner says the tag is
                    m = await self.manifests.keep(
                        digest, manifest_media_type(doc.body, doc.content_type), doc.body)
                    self._record(client.name, repo, tag, m, doc.checked_at)
                    return m, "miss"
                self.metrics.verify_failures.labels("peer", "manifest").inc()
                log.warning("a peer's manifest for %s:%s hashed to %s, not %s; asking upstream",
                            repo, tag, digest, doc.digest)
        return await self._refresh(client, repo, tag, rec)

    async def _refresh(self, client: UpstreamClient, repo: str, tag: str,
                       rec: TagRecord | None) -> tuple[Manifest, Result]:
        known = rec if rec is not None and rec.digest is not None else None
        if known is None:
            return await self._fetch(client, repo, tag), "miss"
        assert known.digest is not None
        upstream = client.name
        try:
            doc = await client.get_manifest(repo, tag, method="HEAD")
        except (UpstreamError, TooManyRequests) as e:
            return self._stale(upstream, repo, tag, known, e)
        if doc.status == 404:
            if self.cache.keep_deleted_tags:
                return self._stale(upstream, repo, tag, known, UpstreamRejected("deleted", 404))
            self.tags.put(upstream, repo, tag, TagRecord(None, None, None, time.time()))
            raise ManifestUnknown(f"manifest {repo}:{tag} not found upstream")
        if doc.status != 200:
            return self._stale(upstream, repo, tag, known,
                               UpstreamRejected(f"HEAD answered {doc.status}", doc.status))
        head_digest = doc.headers.get("Docker-Content-Digest")
        if head_digest == known.digest:
            current = self.manifests.cached(Digest.parse(known.digest))
            if current is not None:
                self.tags.confirm(upstream, repo, tag, known)
                return current, "hit"
        try:
            digest = Digest.parse(head_digest) if head_digest else None
        except MirrorError:
            digest = None
        try:
            if digest is None:
                return await self._fetch(client, repo, tag), "miss"
            fetched = self.manifests.cached(digest) or await self.manifests.fetch(
                client, repo, str(digest), digest)
        except (UpstreamError, TooManyRequests) as e:
            # The tag moved but its GET failed (Docker Hub counts GETs, not HEADs: a 429 comes
            # here; or a 5xx, a timeout, bytes that did not verify): the image the client had
            # is still the best answer within max_stale.
            return self._stale(upstream, repo, tag, known, e)
        self._record(upstream, repo, tag, fetched)
        return fetched, "miss"

    def _stale(self, upstream: str, repo: str, tag: str, known: TagRecord,
               error: MirrorError) -> tuple[Manifest, Result]:
        assert known.digest is not None
        state = freshness(known, time.time(), self.cache.tag_ttl, self.cache.max_stale)
        m = self.manifests.cached(Digest.parse(known.digest))
        if m is None or state is Freshness.EXPIRED:
            raise error
        reason = "ratelimited" if isinstance(error, TooManyRequests) else (
            f"http_{error.upstream_status}" if isinstance(error, UpstreamRejected) else "unreachable")
        self.metrics.stale.labels(upstream, reason).inc()
        log.warning("serving %s/%s:%s as %s (stale): upstream %s: %s", upstream, repo, tag,
                    known.digest, upstream, error.message)
        return m, "stale"

    async def _fetch(self, client: UpstreamClient, repo: str, tag: str) -> Manifest:
        try:
            m = await self.manifests.fetch(client, repo, tag, None)
        except ManifestUnknown:
            # Remembered for the TTL: a client asking again does not cost another GET.
            self.tags.put(client.name, repo, tag, TagRecord(None, None, None, time.time()))
            raise
        self._record(client.name, repo, tag, m)
        return m

    def _record(self, upstream: str, repo: str, tag: str, m: Manifest,
                checked_at: float | None = None) -> None:
        when = time.time() if checked_at is None else min(checked_at, time.time())
        self.tags.put(upstream, repo, tag,
                      TagRecord(str(m.digest), m.media_type, len(m.body), when))
        if self.shared is not None:
            self.shared.publish(upstream, repo, tag)
