"""The pull-through service, free of HTTP framework types: what a route handler asks for.

Manifests by tag go through the tag resolver (pull/tags.py), by digest through the manifest
store (pull/manifests.py); blobs through the fetcher (fetch/blobs.py); tag lists and referrers
are passed through (pull/listings.py). Here: index negotiation, repository links, prefetch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Literal

from cachetools import LRUCache

from mirror.config import Config
from mirror.fetch.blobs import BlobFetcher, BlobHandle
from mirror.observe.metrics import Metrics
from mirror.oci.errors import BlobUnknown, ManifestUnknown, MirrorError, UpstreamRejected
from mirror.oci.models import (
    DEFAULT_PLATFORM,
    INDEX_TYPES,
    Digest,
    Reference,
    accepts,
    parse_manifest,
    select_platform,
)
from mirror.pull.listings import Listings, PassThrough
from mirror.pull.manifests import Manifest, ManifestAnswer, ManifestStore
from mirror.pull.signatures import SignaturePolicy
from mirror.pull.tags import TagResolver
from mirror.store.links import RepoLinks
from mirror.upstream.client import UpstreamClient
from mirror.upstream.clients import Upstreams

log = logging.getLogger("mirror.pull.service")

__all__ = ["Manifest", "ManifestAnswer", "PassThrough", "PullService"]


class PullService:
    def __init__(self, config: Config, upstreams: Upstreams, manifests: ManifestStore,
                 tags: TagResolver, listings: Listings, blobs: BlobFetcher, metrics: Metrics,
                 links: RepoLinks | None = None,
                 signatures: SignaturePolicy | None = None) -> None:
        self.config = config
        self.upstreams = upstreams
        self.manifests = manifests
        self.tags = tags
        self.listings = listings
        self.blobs = blobs
        self.tier = blobs.tier
        self.metrics = metrics
        self.links = links  # set when access rules make repositories differ in who may pull
        self.signatures = signatures  # the `signatures` rules (built by pull/stack.py)
        # Manifests whose contents were linked to a repository already: parsing a manifest on
        # every HEAD by tag to link it again cost ~5% of that request (bench/README.md).
        self._linked: LRUCache[tuple[str, str, str], bool] = LRUCache(maxsize=100_000)
        self._prefetch_slots = asyncio.Semaphore(config.prefetch.parallel)
        self._background: set[asyncio.Task[None]] = set()
        self._children: set[str] = set()  # index children being prefetched

    def client(self, upstream: str) -> UpstreamClient | None:
        return self.upstreams.client(upstream)

    # -- manifests ------------------------------------------------------------------------------

    async def manifest(self, upstream: str, repo: str, ref: Reference, accept: list[str],
                       prefetch: bool = True) -> ManifestAnswer:
        if ref.digest is not None:
            await self._require_link(upstream, repo, ref.digest, "manifest")
            answer = await self.manifests.by_digest(self.client(upstream), repo, ref.digest)
        else:
            assert ref.tag is not None
            answer = await self.tags.resolve(upstream, repo, ref.tag)
        m = answer.manifest
        # The one place the signature rules apply: before the manifest is returned and before
        # any prefetch, so no blob of a refused image is fetched on its account.
        if self.signatures is not None:
            await self.signatures.admit(upstream, repo, m)
        self._link(upstream, repo, m)
        if ref.tag is not None and m.media_type in INDEX_TYPES and not accepts(accept, m.media_type):
            # Like distribution: a client that cannot read an index gets the linux/amd64 image
            # for a tag. A digest names those bytes and no others: it is answered as it is.
            child = select_platform(parse_manifest(m.body, m.media_type), DEFAULT_PLATFORM)
            if child is None:
                raise ManifestUnknown(f"{repo}:{ref} is an index without a linux/amd64 image, and "
                                      f"the client does not accept {m.media_type}")
            inner = await self.manifests.by_digest(self.client(upstream), repo, child.digest)
            if self.signatures is not None:
                await self.signatures.admit(upstream, repo, inner.manifest)
            answer = ManifestAnswer(inner.manifest, answer.result)
        if prefetch and self.config.prefetch.enabled and not self.config.offline:
            self._prefetch(upstream, repo, answer.manifest)
        return answer

    # -- prefetch ------------------------------------------------------------------------------

    def _prefetch(self, upstream: str, repo: str, m: Manifest) -> None:
        client = self.upstreams.clients.get(upstream)
        if client is None:
            return
        parsed = parse_manifest(m.body, m.media_type)
        if parsed.is_index:
            # Which child the client wants, its next request says (the platform's manifest,
            # whose blobs are prefetched then); guessing linux/amd64 cost arm64 clients a
            # whole image. Only configured platforms are fetched right away.
            for platform in self.config.prefetch.platforms:
                child = select_platform(parsed, platform)
                if (child is not None and str(child.digest) not in self._children
                        and self.manifests.cached(child.digest) is None):
                    self._children.add(str(child.digest))  # N index pulls: one child fetch
                    self._spawn(self._prefetch_child(client, repo, child.digest))
            return
        for blob in parsed.blobs:
            self.blobs.prefetch(client, repo, blob.digest, blob.size if blob.size >= 0 else None)

    async def _prefetch_child(self, client: UpstreamClient, repo: str, digest: Digest) -> None:
        async with self._prefetch_slots:
            try:
                answer = await self.manifests.by_digest(client, repo, digest)
            except MirrorError as e:
                log.info("prefetch of %s failed: %s", digest, e.message)
                return
            finally:
                self._children.discard(str(digest))
            self.metrics.prefetches.labels(client.name, "manifest").inc()
            if self.signatures is not None and not await self.signatures.permits(
                    client.name, repo, answer.manifest):
                return  # a child the rules refuse: none of its blobs ahead of the client
            self._prefetch(client.name, repo, answer.manifest)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- repository links ----------------------------------------------------------------------

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
        (mirror/store/links.py); an unknown pair costs one HEAD to the upstream, once."""
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

    # -- blobs ---------------------------------------------------------------------------------

    async def open_blob(self, upstream: str, repo: str, digest: Digest) -> BlobHandle:
        await self._require_link(upstream, repo, digest, "blob")
        hit = self.blobs.local(digest)
        if hit is not None:  # by-digest content never needs the upstream
            self.tier.pin(digest)
            self.tier.touch(digest)
            return hit
        return await self.blobs.open(self.client(upstream), repo, digest)

    async def blob_size(self, upstream: str, repo: str, digest: Digest) -> int | None:
        """A HEAD's answer without downloading: the cold tier's or the upstream's size (a GET
        that follows fetches). None when the hot tier has the blob, or offline: open_blob then."""
        await self._require_link(upstream, repo, digest, "blob")
        client = self.client(upstream)
        if client is None or self.config.offline or self.tier.entry(digest) is not None:
            return None
        if self.blobs.tiers is not None:
            size = await self.blobs.tiers.size(digest)
            if size is not None:
                return size
        doc = await client.head_blob(repo, str(digest))
        if doc.status == 404:
            raise BlobUnknown(f"blob {digest} not found in {repo} upstream")
        if doc.status != 200:
            raise UpstreamRejected(f"upstream {upstream} answered {doc.status} for a HEAD of blob "
                                   f"{digest}", doc.status)
        length = doc.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None  # no length: the download tells

    def release_blob(self, handle: BlobHandle) -> None:
        self.blobs.release(handle)

    # -- pass-through documents -----------------------------------------------------------------

    async def tags_list(self, upstream: str, repo: str, query: str) -> PassThrough:
        return await self.listings.tags_list(upstream, repo, query)

    async def referrers(self, upstream: str, repo: str, digest: Digest, query: str) -> PassThrough:
        return await self.listings.referrers(upstream, repo, digest, query)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.blobs.close()
