"""Pull-through logic, free of HTTP framework types: resolve manifests (tag index, stale on
error, negotiation), open blobs, pass through tag lists and referrers, prefetch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from cachetools import LRUCache, TTLCache

from mirror.config import Config
from mirror.fetch.blobs import BlobFetcher, BlobHandle
from mirror.fetch.coalesce import SingleFlight
from mirror.fetch.shared import SharedDownloads
from mirror.observe.metrics import Metrics
from mirror.oci.errors import (
    BlobUnknown,
    ManifestUnknown,
    MirrorError,
    NameUnknown,
    TooManyRequests,
    UpstreamError,
    UpstreamRejected,
    VerificationError,
)
from mirror.oci.models import (
    DEFAULT_PLATFORM,
    INDEX_TYPES,
    Digest,
    Reference,
    accepts,
    manifest_media_type,
    parse_manifest,
    select_platform,
)
from mirror.store.disk import DiskTier
from mirror.store.index import Freshness, TagIndex, TagRecord, freshness
from mirror.store.links import RepoLinks
from mirror.store.shared_tags import SharedTags
from mirror.store.tiered import TieredStore
from mirror.upstream.client import Document, UpstreamClient

log = logging.getLogger("mirror.service")

Result = Literal["hit", "miss", "stale", "coalesced"]


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    manifest: Manifest
    result: Result


@dataclass(frozen=True, slots=True)
class PassThrough:
    status: int
    content_type: str | None
    body: bytes
    link: str | None = None
    result: Result = "miss"  # how the mirror got it, for the requests metric


class PullService:
    def __init__(self, config: Config, tier: DiskTier, tags: TagIndex,
                 clients: Mapping[str, UpstreamClient], metrics: Metrics,
                 tiers: TieredStore | None = None,
                 workers: SharedDownloads | None = None,
                 links: RepoLinks | None = None) -> None:
        self.config = config
        self.links = links  # set when access rules make repositories differ in who may pull
        # Manifests whose contents were linked to a repository already: parsing a manifest on
        # every HEAD by tag to link it again cost ~5% of that request (bench/README.md).
        self._linked: LRUCache[tuple[str, str, str], bool] = LRUCache(maxsize=100_000)
        self.tier = tier
        self.tags = tags
        self.clients = clients
        self.metrics = metrics
        self.blobs = BlobFetcher(tier, metrics, config.offline, config.finish_abandoned_fetches,
                                 workers, prefetch_parallel=config.prefetch.parallel)
        # server.workers > 1: other processes write the same cache; what memory lacks or
        # holds as stale may be on disk or in the index already.
        self.multiprocess = workers is not None
        # Cold tier (cache.object_store): blobs, manifests and tag records shared by all nodes.
        self.tiers = self.blobs.tiers = tiers
        self.shared = SharedTags(tiers, tags) if tiers is not None else None
        self._manifests: LRUCache[str, Manifest] = LRUCache(
            maxsize=config.cache.manifest_memory, getsizeof=lambda m: len(m.body) + 200)
        self._by_digest: SingleFlight[str, Manifest] = SingleFlight()
        self._by_tag: SingleFlight[tuple[str, str, str], tuple[Manifest, Result]] = SingleFlight()
        self._lists: TTLCache[tuple[str, str, str], PassThrough] = TTLCache(
            maxsize=10_000, ttl=max(config.cache.tags_list_ttl, 0.001))
        self._prefetch_slots = asyncio.Semaphore(config.prefetch.parallel)
        self._background: set[asyncio.Task[None]] = set()

    def client(self, upstream: str) -> UpstreamClient | None:
        if self.config.offline:
            return None
        c = self.clients.get(upstream)
        if c is None:
            raise NameUnknown(f"registry {upstream!r} is not configured on this mirror")
        return c

    # -- manifests ------------------------------------------------------------------------------

    def cached_manifest(self, digest: Digest) -> Manifest | None:
        key = str(digest)
        m = self._manifests.get(key)
        if m is not None:
            self.tier.touch(digest)
            return m
        entry = self.tier.entry(digest)
        if entry is None:
            if not self.multiprocess:
                return None
            return self._manifest_from_other_worker(digest)
        body = self.tier.read_bytes_sync(digest)  # small, page-cached; memory holds the hot ones
        if body is None or Digest.of(body, digest.algorithm) != digest:
            return None
        m = Manifest(digest, entry.media_type or manifest_media_type(body, None), body)
        self._manifests[key] = m
        self.tier.touch(digest)
        return m

    def _manifest_from_other_worker(self, digest: Digest) -> Manifest | None:
        body = self.tier.read_bytes_sync(digest)
        if body is None or Digest.of(body, digest.algorithm) != digest:
            return None
        assert self.blobs.shared is not None
        recorded = self.blobs.shared.media_type(digest)  # the upstream's, as the storer saw it
        m = Manifest(digest, recorded or manifest_media_type(body, None), body)
        self.tier.learn(digest, len(body), m.media_type, is_manifest=True)
        self._manifests[str(digest)] = m
        return m

    async def manifest(self, upstream: str, repo: str, ref: Reference, accept: list[str],
                       prefetch: bool = True) -> ManifestAnswer:
        if ref.digest is not None:
            await self._require_link(upstream, repo, ref.digest, "manifest")
            answer = await self._manifest_by_digest(upstream, repo, ref.digest)
        else:
            assert ref.tag is not None
            answer = await self._manifest_by_tag(upstream, repo, ref.tag)
        m = answer.manifest
        self._link(upstream, repo, m)
        if m.media_type in INDEX_TYPES and not accepts(accept, m.media_type):
            # Like distribution: a client that cannot read an index gets the linux/amd64 image.
            child = select_platform(parse_manifest(m.body, m.media_type), DEFAULT_PLATFORM)
            if child is None:
                raise ManifestUnknown(f"{repo}:{ref} is an index without a linux/amd64 image, and "
                                      f"the client does not accept {m.media_type}")
            inner = await self._manifest_by_digest(upstream, repo, child.digest)
            answer = ManifestAnswer(inner.manifest, answer.result)
        if prefetch and self.config.prefetch.enabled and not self.config.offline:
            self._prefetch(upstream, repo, answer.manifest)
        return answer

    async def _manifest_by_digest(self, upstream: str, repo: str, digest: Digest) -> ManifestAnswer:
        m = self.cached_manifest(digest)
        if m is not None:
            return ManifestAnswer(m, "hit")
        if self.tiers is not None and await self.tiers.manifest(digest) is not None:
            m = self.cached_manifest(digest)
            if m is not None:
                return ManifestAnswer(m, "hit")
        client = self.client(upstream)
        if client is None:
            raise ManifestUnknown(f"manifest {digest} is not cached and the mirror is offline")
        m, joined = await self._by_digest.run(
            str(digest), lambda: self._fetch_manifest(client, repo, str(digest), digest))
        if joined:
            self.metrics.coalesced.labels(upstream, "manifest").inc()
        return ManifestAnswer(m, "coalesced" if joined else "miss")

    async def _manifest_by_tag(self, upstream: str, repo: str, tag: str) -> ManifestAnswer:
        rec = self.tags.get(upstream, repo, tag)
        if self.shared is not None:
            rec = await self.shared.recall(upstream, repo, tag, rec)
        now = time.time()
        if self.multiprocess and rec is not None and freshness(
                rec, now, self.config.cache.tag_ttl, None) is not Freshness.FRESH:
            rec = self.tags.reload(upstream, repo, tag)  # maybe revalidated by another worker
        if rec is not None:
            state = freshness(rec, now, self.config.cache.tag_ttl, self.config.cache.max_stale)
            if state is Freshness.FRESH:
                if rec.digest is None:
                    raise ManifestUnknown(f"manifest {repo}:{tag} not found upstream")
                m = self.cached_manifest(Digest.parse(rec.digest))
                if m is not None:
                    return ManifestAnswer(m, "hit")
        if self.config.offline:
            if rec is not None and rec.digest is not None:
                m = self.cached_manifest(Digest.parse(rec.digest))
                if m is not None:
                    return ManifestAnswer(m, "hit")
            raise ManifestUnknown(f"manifest {repo}:{tag} is not cached and the mirror is offline")
        (m, result), joined = await self._by_tag.run(
            (upstream, repo, tag), lambda: self._refresh_tag(upstream, repo, tag, rec))
        if joined:
            self.metrics.coalesced.labels(upstream, "manifest").inc()
            if result == "miss":
                result = "coalesced"
        return ManifestAnswer(m, result)

    async def _refresh_tag(self, upstream: str, repo: str, tag: str,
                           rec: TagRecord | None) -> tuple[Manifest, Result]:
        client = self.client(upstream)
        assert client is not None
        known = rec if rec is not None and rec.digest is not None else None
        if known is None:
            m = await self._fetch_tag(client, repo, tag)
            return m, "miss"
        assert known.digest is not None
        try:
            doc = await client.get_manifest(repo, tag, method="HEAD")
        except (UpstreamError, TooManyRequests) as e:
            return self._stale(upstream, repo, tag, known, e)
        if doc.status == 404:
            if self.config.cache.keep_deleted_tags:
                return self._stale(upstream, repo, tag, known, UpstreamRejected("deleted", 404))
            self.tags.put(upstream, repo, tag, TagRecord(None, None, None, time.time()))
            raise ManifestUnknown(f"manifest {repo}:{tag} not found upstream")
        if doc.status != 200:
            return self._stale(upstream, repo, tag, known,
                               UpstreamRejected(f"HEAD answered {doc.status}", doc.status))
        head_digest = doc.headers.get("Docker-Content-Digest")
        if head_digest == known.digest:
            current = self.cached_manifest(Digest.parse(known.digest))
            if current is not None:
                self.tags.confirm(upstream, repo, tag, known)
                return current, "hit"
        if head_digest:
            try:
                digest = Digest.parse(head_digest)
            except MirrorError:
                digest = None
            if digest is not None:
                fetched = self.cached_manifest(digest) or await self._fetch_manifest(
                    client, repo, str(digest), digest)
                self._record_tag(upstream, repo, tag, fetched)
                return fetched, "miss"
        return await self._fetch_tag(client, repo, tag), "miss"

    def _stale(self, upstream: str, repo: str, tag: str, known: TagRecord,
               error: MirrorError) -> tuple[Manifest, Result]:
        assert known.digest is not None
        state = freshness(known, time.time(), self.config.cache.tag_ttl, self.config.cache.max_stale)
        m = self.cached_manifest(Digest.parse(known.digest))
        if m is None or state is Freshness.EXPIRED:
            raise error
        reason = "ratelimited" if isinstance(error, TooManyRequests) else (
            f"http_{error.upstream_status}" if isinstance(error, UpstreamRejected) else "unreachable")
        self.metrics.stale.labels(upstream, reason).inc()
        log.warning("serving %s/%s:%s as %s (stale): upstream %s: %s", upstream, repo, tag,
                    known.digest, upstream, error.message)
        return m, "stale"

    async def _fetch_tag(self, client: UpstreamClient, repo: str, tag: str) -> Manifest:
        m = await self._fetch_manifest(client, repo, tag, None)
        self._record_tag(client.name, repo, tag, m)
        return m

    def _record_tag(self, upstream: str, repo: str, tag: str, m: Manifest) -> None:
        self.tags.put(upstream, repo, tag,
                      TagRecord(str(m.digest), m.media_type, len(m.body), time.time()))
        if self.shared is not None:
            self.shared.publish(upstream, repo, tag)

    async def _fetch_manifest(self, client: UpstreamClient, repo: str, ref: str,
                              want: Digest | None) -> Manifest:
        doc = await client.get_manifest(repo, ref)
        if doc.status == 404:
            if want is None:
                self.tags.put(client.name, repo, ref, TagRecord(None, None, None, time.time()))
            raise ManifestUnknown(f"manifest {repo}:{ref} not found upstream")
        if doc.status != 200:
            raise UpstreamRejected(f"upstream {client.name} answered {doc.status} for manifest "
                                   f"{repo}:{ref}", doc.status)
        body = doc.body
        # Counted before verification: bytes that fail to verify still crossed the link.
        self.metrics.upstream_bytes.labels(client.name).inc(len(body))
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
        media_type = manifest_media_type(body, _content_type(doc))
        m = Manifest(digest, media_type, body)
        if self.tier.entry(digest) is None:
            try:
                await self.tier.put_bytes(digest, body, media_type, is_manifest=True)
            except OSError as e:
                # Disk full or I/O error: still answer from memory; the next miss refetches.
                self.metrics.cache_write_errors.labels(self.tier.name).inc()
                log.warning("could not store manifest %s: %s", digest, e.strerror or e)
        self._manifests[str(digest)] = m
        return m

    # -- prefetch ------------------------------------------------------------------------------

    def _prefetch(self, upstream: str, repo: str, m: Manifest) -> None:
        client = self.clients.get(upstream)
        if client is None:
            return
        parsed = parse_manifest(m.body, m.media_type)
        if parsed.is_index:
            child = select_platform(parsed, DEFAULT_PLATFORM)
            if child is not None and self.cached_manifest(child.digest) is None:
                self._spawn(self._prefetch_child(upstream, repo, child.digest))
            return
        for blob in parsed.blobs:
            self.blobs.prefetch(client, repo, blob.digest, blob.size if blob.size >= 0 else None)

    async def _prefetch_child(self, upstream: str, repo: str, digest: Digest) -> None:
        async with self._prefetch_slots:
            try:
                answer = await self._manifest_by_digest(upstream, repo, digest)
            except MirrorError as e:
                log.info("prefetch of %s failed: %s", digest, e.message)
                return
            self.metrics.prefetches.labels(upstream, "manifest").inc()
            self._prefetch(upstream, repo, answer.manifest)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- blobs ---------------------------------------------------------------------------------

    def _link(self, upstream: str, repo: str, m: Manifest) -> None:
        """Everything a manifest served for a repository names belongs to that repository."""
        if self.links is None:
            return
        key = (upstream, repo, str(m.digest))
        if key in self._linked:
            return
        self._linked[key] = True
        parsed = parse_manifest(m.body, m.media_type)
        self.links.add(upstream, repo, [str(m.digest), *(str(d.digest) for d in parsed.children),
                                        *(str(d.digest) for d in parsed.blobs)])

    async def _require_link(self, upstream: str, repo: str, digest: Digest,
                            kind: Literal["blob", "manifest"]) -> None:
        """With access rules, serve a digest for a repository only if it belongs there
        (mirror/links.py); an unknown pair costs one HEAD to the upstream, once."""
        if self.links is None or self.links.has(upstream, repo, str(digest)):
            return
        unknown = BlobUnknown if kind == "blob" else ManifestUnknown
        client = self.client(upstream)
        if client is None:
            raise unknown(f"{kind} {digest} is not known in {repo} on this offline mirror")
        if kind == "blob":
            doc = await client.head_blob(repo, str(digest))
        else:
            doc = await client.get_manifest(repo, str(digest), method="HEAD")
        if doc.status != 200:
            raise unknown(f"{kind} {digest} not found in {repo}")
        self.links.add(upstream, repo, [str(digest)])

    async def open_blob(self, upstream: str, repo: str, digest: Digest) -> BlobHandle:
        await self._require_link(upstream, repo, digest, "blob")
        hit = self.blobs.local(digest)
        if hit is not None:  # by-digest content never needs the upstream
            self.tier.pin(digest)
            self.tier.touch(digest)
            return hit
        return await self.blobs.open(self.client(upstream), repo, digest)

    def release_blob(self, handle: BlobHandle) -> None:
        self.blobs.release(handle)

    # -- pass-through documents -----------------------------------------------------------------

    async def tags_list(self, upstream: str, repo: str, query: str) -> PassThrough:
        key = (upstream, repo, query)
        cached = self._lists.get(key)
        if cached is not None:
            return replace(cached, result="hit")
        client = self.client(upstream)
        if client is None:
            return replace(self._tags_from_index(upstream, repo), result="hit")
        try:
            doc = await client.get_tags(repo, query)
        except (UpstreamError, TooManyRequests):
            return replace(self._tags_from_index(upstream, repo), result="stale")
        answer = PassThrough(doc.status, _content_type(doc), doc.body, doc.headers.get("Link"))
        if doc.status == 200:
            self._lists[key] = answer
        return answer

    def _tags_from_index(self, upstream: str, repo: str) -> PassThrough:
        import json

        names = sorted(t for (u, r, t, _) in self.tags.all() if u == upstream and r == repo)
        if not names:
            raise NameUnknown(f"repository {repo} is not known to this mirror")
        body = json.dumps({"name": repo, "tags": names}).encode()
        return PassThrough(200, "application/json", body)

    async def referrers(self, upstream: str, repo: str, digest: Digest, query: str) -> PassThrough:
        client = self.client(upstream)
        if client is None:
            raise ManifestUnknown("referrers are not cached and the mirror is offline")
        doc = await client.get_referrers(repo, str(digest), query)
        return PassThrough(doc.status, _content_type(doc), doc.body, doc.headers.get("Link"))

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.blobs.close()


def _content_type(doc: Document) -> str | None:
    ct = doc.headers.get("Content-Type")
    return ct.split(";", 1)[0].strip() if ct else None
