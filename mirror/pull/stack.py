"""The pull stack built from a Config: the index, the tiers, one client per upstream, the
fetcher and the service. The server's composition root (mirror/http/app.py) and the command-line
tools (seed, import, gc) build it here, so both run on exactly the same wiring."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from mirror import __version__
from mirror.config import Config
from mirror.fetch.blobs import BlobFetcher
from mirror.fetch.shared import SharedDownloads
from mirror.observe.metrics import Metrics
from mirror.pull.listings import Listings
from mirror.pull.manifests import ManifestStore
from mirror.pull.service import PullService
from mirror.pull.tags import TagResolver
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.index import TagIndex
from mirror.store.links import RepoLinks
from mirror.store.shared_tags import SharedTags
from mirror.store.tiered import TieredStore, build_tiered
from mirror.upstream.client import UpstreamClient
from mirror.upstream.clients import Upstreams

USER_AGENT = f"mirror/{__version__} (pull-through cache)"


@dataclass
class Services:
    """The cache and pull service built from a Config: shared by the server and the
    command-line tools (seed, import), so both run on exactly the same wiring."""

    db: Database
    tier: DiskTier
    tags: TagIndex
    clients: dict[str, UpstreamClient]
    service: PullService
    sessions: list[aiohttp.ClientSession]
    tiers: TieredStore | None = None  # cold tier (cache.object_store), with write-behind

    async def close(self) -> None:
        await self.service.close()
        if self.tiers is not None:
            await self.tiers.close()  # pending uploads stay in the database for next time
        for s in self.sessions:
            await s.close()
        await self.db.close()


async def build_services(config: Config, metrics: Metrics, *, shared_dir: bool = False,
                         evicting: bool = True) -> Services:
    """Open the cache (sweeping unfinished downloads) and one client per upstream; the caller
    must `await close()`. No upstream client at all when the config is offline.
    `shared_dir`: one of several worker processes sharing cache.dir (no sweep, cross-process
    downloads); `evicting`: this process keeps the hot tier's budget (one of them does)."""
    db = Database(config.cache.dir / "index.db", metrics)
    tier = DiskTier(config.cache.dir, db, config.cache.max_size, metrics,
                    config.cache.high_watermark, config.cache.low_watermark, evicting=evicting)
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
    tags = TagIndex(db)
    tags.drop_negative()
    tiers = build_tiered(config, tier, db, metrics) if config.cache.object_store else None
    shared = SharedDownloads(tier, db) if shared_dir else None
    # Access rules make repositories differ in who may pull them: then a cached digest is only
    # served for repositories it is linked to (mirror/store/links.py).
    links = RepoLinks(db) if config.auth is not None else None
    upstreams = Upstreams(clients, config.offline)
    manifests = ManifestStore(tier, metrics, config.cache.manifest_memory, tiers, shared)
    resolver = TagResolver(config.cache, tags, manifests, metrics, upstreams.client,
                           SharedTags(tiers, tags) if tiers is not None else None,
                           multiprocess=shared is not None)
    blobs = BlobFetcher(tier, metrics, config.offline, config.finish_abandoned_fetches, shared,
                        prefetch_parallel=config.prefetch.parallel, tiers=tiers)
    service = PullService(config, upstreams, manifests, resolver,
                          Listings(tags, upstreams.client, config.cache.tags_list_ttl), blobs,
                          metrics, links)
    if tiers is not None:
        await tiers.start()  # resumes pending uploads
    return Services(db, tier, tags, clients, service, sessions, tiers)
