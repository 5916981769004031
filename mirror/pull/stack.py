"""The pull stack built from a Config: the index, the tiers, one client per upstream, the
fetcher and the service. The server's composition root (mirror/http/app.py) and the command-line
tools (seed, import, gc) build it here, so both run on exactly the same wiring."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from mirror import __version__
from mirror.config import Config
from mirror.fetch.blobs import BlobFetcher
from mirror.fetch.budget import AheadBudget
from mirror.fetch.peer_fetch import PeerClient
from mirror.fetch.peers import PeerSet
from mirror.fetch.shared import SharedDownloads
from mirror.observe.audit import AuditLog
from mirror.observe.metrics import Metrics
from mirror.pull.listings import Listings
from mirror.pull.manifests import ManifestStore
from mirror.pull.service import PullService
from mirror.pull.signatures import SignaturePolicy
from mirror.pull.tags import TagResolver
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.eviction import Evictor
from mirror.store.index import TagIndex
from mirror.store.links import RepoLinks
from mirror.store.shared_tags import SharedTags, tag_records
from mirror.store.tiered import ColdUsage, TieredStore, UseMarks
from mirror.store.uploads import Uploader
from mirror.store.verdicts import VerdictStore
from mirror.upstream.client import UpstreamClient
from mirror.upstream.clients import Upstreams

log = logging.getLogger("mirror.pull.stack")
USER_AGENT = f"mirror/{__version__} (pull-through cache)"


@dataclass
class Services:
    """The cache and pull service built from a Config: shared by the server and the
    command-line tools (seed, import), so both run on exactly the same wiring."""

    db: Database
    tier: DiskTier
    evictor: Evictor
    tags: TagIndex
    clients: dict[str, UpstreamClient]
    service: PullService
    sessions: list[aiohttp.ClientSession]
    tiers: TieredStore | None = None  # cold tier (cache.object_store), with write-behind
    peers: PeerSet | None = None  # cluster: the other nodes, their state, the peer secret

    async def close(self) -> None:
        """Every part is closed even when one fails: the index's queued writes above all."""
        closers = [self.service.close, self.evictor.close]
        if self.tiers is not None:
            closers.append(self.tiers.close)  # pending uploads stay in the database
        closers += [s.close for s in self.sessions]
        for close in closers:
            try:
                await close()
            except Exception:
                log.exception("closing %s failed", getattr(close, "__qualname__", close))
        await self.db.close()


@dataclass
class Storage:
    """The hot tier and (with cache.object_store) the cold tier."""

    tier: DiskTier
    tiers: TieredStore | None


def build_storage(config: Config, db: Database, tags: TagIndex, metrics: Metrics,
                  evicting: bool) -> Storage:
    """Wire the tiers: the upload queue exists before the hot tier, which tells it of every
    commit."""
    cache, os_config = config.cache, config.cache.object_store
    if os_config is None:
        tier = DiskTier(cache.dir, db, cache.max_size, metrics, cache.high_watermark,
                        cache.low_watermark, evicting=evicting)
        return Storage(tier, None)
    # Imported here: obstore's extension costs every process ~5 MiB of RSS (bench/README.md),
    # and most caches have no object store.
    from mirror.store.objectstore import ColdTier, build_store

    cold = ColdTier(build_store(os_config))
    usage = ColdUsage(metrics, cold.name)
    marks = UseMarks(cold, os_config.max_age)
    uploads = Uploader(cache.dir / "blobs", cold, db, metrics, os_config.upload_concurrency,
                       tag_source=tag_records(tags), on_uploaded=usage.uploaded)
    tier = DiskTier(cache.dir, db, cache.max_size, metrics, cache.high_watermark,
                    cache.low_watermark, evicting=evicting, on_commit=uploads.committed,
                    on_touch=marks.mark_used if os_config.max_age is not None else None)
    tiers = TieredStore(tier, cold, uploads, metrics, marks=marks, usage=usage,
                        lookup_timeout=os_config.lookup_timeout, max_age=os_config.max_age)
    return Storage(tier, tiers)


async def build_services(config: Config, metrics: Metrics, *, shared_dir: bool = False,
                         evicting: bool = True, audit: AuditLog | None = None) -> Services:
    """Open the cache (sweeping unfinished downloads) and one client per upstream; the caller
    must `await close()`. No upstream client at all when the config is offline.
    `shared_dir`: one of several worker processes sharing cache.dir (no sweep, cross-process
    downloads); `evicting`: this process keeps the hot tier's budget (one of them does);
    `audit`: where signature refusals are written (the server's audit log)."""
    db = Database(config.cache.dir / "index.db", metrics)
    tags = TagIndex(db)
    tags.drop_negative()
    storage = build_storage(config, db, tags, metrics, evicting)
    tier, tiers = storage.tier, storage.tiers
    # Before open_sync reads the directory: it learns what other workers do from then on.
    shared = SharedDownloads(tier, db) if shared_dir else None
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, tier.open_sync, not shared_dir)
    await db.start()
    sessions: list[aiohttp.ClientSession] = []
    clients: dict[str, UpstreamClient] = {}
    if not config.offline:
        for up in config.upstreams.values():
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=up.connect_timeout,
                                              sock_read=up.read_timeout),
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,  # bytes are content-addressed: never let aiohttp alter them
            )
            sessions.append(session)
            clients[up.name] = UpstreamClient(up, session, metrics)
    # The evictor asks the upload queue which victims still wait for their cold copy; in a
    # worker, each round first learns what the other workers stored and read.
    uploads = tiers.uploads if tiers is not None else None
    evictor = Evictor(tier, metrics, guard=uploads.ensure if uploads else None,
                      pending=uploads.is_pending if uploads else None,
                      before_round=shared.learn_from_index if shared else None)
    # Access rules make repositories differ in who may pull them: then a cached digest is only
    # served for repositories it is linked to (mirror/store/links.py).
    links = RepoLinks(db) if config.auth is not None else None
    upstreams = Upstreams(clients, config.offline)
    budget = AheadBudget()  # one per process: every download's write-behind memory
    peers, peer_client = _cluster(config, metrics, tier, sessions, budget)
    manifests = ManifestStore(tier, metrics, config.cache.manifest_memory, tiers, shared,
                              peer_client)
    resolver = TagResolver(config.cache, tags, manifests, metrics, upstreams.client,
                           SharedTags(tiers, tags) if tiers is not None else None,
                           multiprocess=shared is not None, peers=peer_client)
    blobs = BlobFetcher(tier, metrics, config.offline, config.finish_abandoned_fetches, shared,
                        prefetch_parallel=config.prefetch.parallel, tiers=tiers,
                        peers=peer_client, direct_io=config.cache.direct_io, budget=budget)
    # Built even without rules: a SIGHUP may bring the first ones (no rule: one empty loop).
    signatures = SignaturePolicy(config, VerdictStore(db), manifests, resolver, blobs,
                                 upstreams.client, metrics, audit)
    service = PullService(config, upstreams, manifests, resolver,
                          Listings(tags, upstreams.client, config.cache.tags_list_ttl), blobs,
                          metrics, links, signatures)
    if tiers is not None:
        await tiers.start()  # resumes pending uploads
    return Services(db, tier, evictor, tags, clients, service, sessions, tiers, peers)


def _cluster(config: Config, metrics: Metrics, tier: DiskTier,
             sessions: list[aiohttp.ClientSession],
             budget: AheadBudget) -> tuple[PeerSet | None, PeerClient | None]:
    """cluster: the peer set and the client that asks owners (its own session: peers are on
    the local network, with their own short timeouts)."""
    if config.cluster is None or config.offline:
        return None, None
    peers = PeerSet(config.cluster)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, use_dns_cache=False),
        headers={"User-Agent": USER_AGENT}, auto_decompress=False)
    sessions.append(session)
    return peers, PeerClient(peers, session, metrics, tier, config.cache.direct_io, budget)
