"""Blobs: serve from the hot tier, or join/start the one upstream fetch for the digest.

A fetch runs as its own task (a client that disconnects does not cancel it), waits for a slot of
its upstream (never a 429 to the client: it queues), streams into a hashed temp file, resumes
with Range when the upstream connection breaks mid-body, and commits only a verified file."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Literal

import aiohttp

from mirror.fetch.budget import AheadBudget
from mirror.fetch.coalesce import BlobFetch
from mirror.fetch.download import WriteBehind, download_into, lower_priority
from mirror.fetch.handles import BlobHandle as BlobHandle
from mirror.fetch.handles import CommittedFile as CommittedFile
from mirror.fetch.handles import Download as Download
from mirror.fetch.handles import Source as Source
from mirror.fetch.handles import Uncached as Uncached
from mirror.fetch.passthrough import open_passthrough
from mirror.fetch.peer_fetch import PeerClient
from mirror.fetch.shared import SharedDownloads
from mirror.observe.metrics import Metrics
from mirror.oci.errors import (
    BlobUnknown,
    DiskFull,
    MirrorError,
    UpstreamUnavailable,
    VerificationError,
)
from mirror.oci.models import Digest
from mirror.store.disk import DiskTier, is_disk_full, open_for_reading
from mirror.store.tiered import TieredStore
from mirror.upstream.client import UpstreamClient

log = logging.getLogger("mirror.fetch.blobs")
DISK_FULL_BACKOFF = 30.0  # seconds of uncached serving after the hot tier reported ENOSPC

class BlobFetcher:
    def __init__(self, tier: DiskTier, metrics: Metrics, offline: bool,
                 finish_abandoned: bool = True, shared: SharedDownloads | None = None,
                 prefetch_parallel: int = 4, tiers: TieredStore | None = None,
                 peers: PeerClient | None = None, direct_io: int | None = None,
                 budget: AheadBudget | None = None) -> None:
        self.tier = tier
        self.direct_io = direct_io  # blobs this big are written O_DIRECT (store/temp.py)
        self.budget = budget if budget is not None else AheadBudget()  # shared with peers
        # server.workers > 1: downloads are single-flight across the processes sharing `tier`.
        self.shared = shared
        self.metrics = metrics
        self.offline = offline
        self.finish_abandoned = finish_abandoned
        self._fetches: dict[str, BlobFetch] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.tiers = tiers  # cold tier (cache.object_store): consulted before upstream
        self.peers = peers  # cluster: the digest's owner is asked before the upstream
        self._sources: weakref.WeakKeyDictionary[BlobFetch, Source] = weakref.WeakKeyDictionary()
        self._from_cold_tier: weakref.WeakSet[BlobFetch] = weakref.WeakSet()
        self._local_only: weakref.WeakSet[BlobFetch] = weakref.WeakSet()  # for a peer: no peers
        # After ENOSPC the hot tier is given time to evict; meanwhile misses stream through.
        self.disk_full_until = 0.0
        self._evictions: set[asyncio.Future[tuple[int, int]]] = set()
        # Prefetches wait in manifest order, `prefetch_parallel` at a time: a client that
        # reads layers one after another finds the next one under way, and the prefetches do
        # not take the CPU and the link from the download it is waiting for (bench/README.md).
        self.prefetch_parallel = max(1, prefetch_parallel)
        # In order, by digest: N pulls of one cold manifest queue its blobs once, not N times.
        self._prefetch_queue: dict[str, tuple[UpstreamClient, str, Digest, int | None]] = {}
        self._prefetching = 0
        # Batches of a download no client is reading yet (a prefetch) are written and hashed
        # on threads at a lower CPU priority: on a host shared with its clients they yield to
        # the client and to the download it is reading (cold `dir:` pulls 5-6% faster in two
        # A/Bs, bench/README.md). A client that joins moves the next batch to normal threads.
        # Single process only: with server.workers a client of another worker may be reading
        # this download, and `readers` counts only this worker's clients.
        self._background_pool: ThreadPoolExecutor | None = None

    async def close(self) -> None:
        """Stop every download: their temp files are removed, nothing half-written stays."""
        self._prefetch_queue.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._background_pool is not None:
            self._background_pool.shutdown(wait=False)

    def inflight(self) -> int:
        return len(self._fetches)

    def prefetch_backlog(self) -> int:  # blobs queued for prefetch, not started yet
        return len(self._prefetch_queue)

    def _slot(self, client: UpstreamClient) -> asyncio.Semaphore:
        sem = self._slots.get(client.name)
        if sem is None:
            sem = self._slots[client.name] = asyncio.Semaphore(
                client.config.max_concurrent_fetches)
        return sem

    def local(self, digest: Digest) -> BlobHandle | None:
        entry = self.tier.entry(digest)
        if entry is None:
            return None
        path = self.tier.path(digest)
        # Opened now (see CommittedFile): a file that has gone (evicted by another worker, an
        # operator's delete, a delete/re-commit race) is forgotten and fetched again.
        try:
            fobj = open_for_reading(path)  # handed to the response or closed by release()
        except FileNotFoundError:
            log.warning("cached blob %s has no file any more: fetching it again", digest)
            self.tier.forget(digest)
            return None
        return BlobHandle(digest, entry.size, "hot", "hit", CommittedFile(path, fobj))

    def _committed_elsewhere(self, digest: Digest) -> BlobHandle | None:
        """server.workers > 1: a blob another worker committed is a hit here too."""
        if self.shared is None or not self.shared.learn_final(digest):
            return None
        return self.local(digest)

    async def open(self, client: UpstreamClient | None, repo: str, digest: Digest,
                   expected_size: int | None = None, for_peer: bool = False) -> BlobHandle:
        """A handle for serving `digest`; the caller must `release()` it. `for_peer`: a
        peer asks this node as the owner; a fetch started for it asks no other peer."""
        hit = self.local(digest)
        if hit is not None:
            self.tier.pin(digest)
            self.tier.touch(digest)
            return hit
        key = str(digest)
        fetch = self._fetches.get(key)
        result: Literal["miss", "coalesced"] = "coalesced"
        if fetch is None:
            hit = self._committed_elsewhere(digest)
            if hit is not None:
                self.tier.pin(digest)
                self.tier.touch(digest)
                return hit
            if (client is None or self.offline) and self.tiers is None:
                raise BlobUnknown(f"blob {digest} is not cached and the mirror is offline")
            if client is not None and time.monotonic() < self.disk_full_until:
                size, body = await open_passthrough(client, repo, digest)
                self.tier.pin(digest)
                return BlobHandle(digest, size, "upstream", "miss", Uncached(body))
            fetch = self._start(None if self.offline else client, repo, digest, expected_size,
                                for_peer)
            result = "miss"
        else:
            self.metrics.coalesced.labels(client.name if client else "", "blob").inc()
        # A reader descriptor now if the fetch has its file open (a shared download opens it
        # only once started); until then the client counts as a reader all the same.
        fd = fetch.open_reader() if fetch.temp.fd >= 0 and not fetch.temp.closed else None
        if fd is None:
            fetch.readers += 1
        self.tier.pin(digest)

        def drop_reader() -> None:
            if fd is not None:
                fetch.close_reader(fd)
            else:
                fetch.readers -= 1

        try:
            await fetch.wait_started()
        except DiskFull:
            drop_reader()
            if client is None or self.offline:
                self.tier.unpin(digest)
                raise
            # No room to cache it: this client gets its own verified stream from upstream.
            try:
                size, body = await open_passthrough(client, repo, digest)
            except BaseException:
                self.tier.unpin(digest)
                raise
            return BlobHandle(digest, size, "upstream", "miss", Uncached(body))
        except BaseException:
            drop_reader()
            self.tier.unpin(digest)
            raise
        if fd is None:
            fetch.readers -= 1
            if fetch.temp.closed:  # finished while we waited: committed, a plain hit now
                hit = self.local(digest)
                if hit is None:
                    self.tier.unpin(digest)
                    raise UpstreamUnavailable(f"blob {digest} vanished right after its download")
                return BlobHandle(digest, hit.size, "upstream", result, hit.body)
            fd = fetch.open_reader()
        return BlobHandle(digest, fetch.size, self._sources.get(fetch, "upstream"), result,
                          Download(fetch, fd))

    def release(self, handle: BlobHandle) -> None:
        self.tier.unpin(handle.digest)
        body = handle.body
        if isinstance(body, CommittedFile) and body.file is not None:
            body.file.close()
            body.file = None
        if isinstance(body, Download):
            fetch = body.fetch
            if body.fd is not None:
                fetch.close_reader(body.fd)
                body.fd = None
            if (not self.finish_abandoned and fetch.readers == 0 and not fetch.done
                    and fetch.task is not None):
                fetch.task.cancel()

    def prefetch(self, client: UpstreamClient, repo: str, digest: Digest, size: int | None) -> bool:
        """Queue a blob nobody asked for yet. False if cached, in flight or queued already."""
        if str(digest) in self._prefetch_queue or self._needless(digest):
            return False
        self._prefetch_queue[str(digest)] = (client, repo, digest, size)
        self._pump_prefetches()
        return True

    def _needless(self, digest: Digest) -> bool:
        if self.offline or self.tier.entry(digest) is not None or str(digest) in self._fetches:
            return True
        return self.shared is not None and (self.shared.learn_final(digest)
                                            or self.shared.downloading_elsewhere(digest))

    def _pump_prefetches(self) -> None:
        # A queued blob that a client asked for meanwhile is in flight already: skipped here.
        while self._prefetching < self.prefetch_parallel and self._prefetch_queue:
            client, repo, digest, size = self._prefetch_queue.pop(next(iter(self._prefetch_queue)))
            if self._needless(digest):
                continue
            fetch = self._start(client, repo, digest, size)
            self.metrics.prefetches.labels(client.name, "blob").inc()
            self._prefetching += 1
            assert fetch.task is not None
            fetch.task.add_done_callback(self._prefetch_done)

    def _background(self) -> Executor:
        if self._background_pool is None:
            self._background_pool = ThreadPoolExecutor(2, thread_name_prefix="mirror-ahead",
                                                        initializer=lower_priority)
        return self._background_pool

    def _prefetch_done(self, _task: asyncio.Task[None]) -> None:
        self._prefetching -= 1
        self._pump_prefetches()

    async def wait(self, digest: Digest) -> None:
        """Wait for an in-flight fetch of `digest` to end (tests, seeding)."""
        fetch = self._fetches.get(str(digest))
        if fetch is not None and fetch.task is not None:
            await asyncio.wait([fetch.task])

    def _start(self, client: UpstreamClient | None, repo: str, digest: Digest,
               expected_size: int | None, local_only: bool = False) -> BlobFetch:
        key = str(digest)
        # Registered before any await: a concurrent request finds this fetch and joins it.
        temp = (self.tier.new_temp(digest, expected_size) if self.shared is None
                else self.shared.new_temp(digest, expected_size))
        fetch = BlobFetch(key, temp)
        self._fetches[key] = fetch
        if local_only:
            self._local_only.add(fetch)
        fetch.task = asyncio.create_task(self._run(client, repo, digest, fetch),
                                         name=f"fetch {key[:19]}")
        self._tasks.add(fetch.task)
        fetch.task.add_done_callback(self._tasks.discard)
        return fetch

    async def _run(self, client: UpstreamClient | None, repo: str, digest: Digest,
                   fetch: BlobFetch) -> None:
        up = client.name if client is not None else "cold"
        self.tier.pin(digest)
        try:
            if self.shared is None:
                await self._fill(client, repo, digest, fetch)
            else:
                await self.shared.run(fetch, lambda: self._fill(client, repo, digest, fetch))
        except VerificationError as e:
            up = ("cold" if fetch in self._from_cold_tier else
                  "peer" if self._sources.get(fetch) == "peer" else up)
            if up == "cold" and self.tiers is not None:
                self.tiers.discard_cold(digest)
            else:
                self.metrics.verify_failures.labels(up, "blob").inc()
            log.warning("%s sent bad content for %s: %s", up, digest, e)
            fetch.temp.abort_sync()
            fetch.fail(e)
        except BaseException as e:
            fetch.temp.abort_sync()
            if isinstance(e, DiskFull) or (isinstance(e, OSError)
                                           and not isinstance(e, aiohttp.ClientError)):
                self.metrics.cache_write_errors.labels(self.tier.name).inc()  # disk full, I/O
                if isinstance(e, DiskFull):
                    log.warning("%s; serving it uncached", e.message)
                elif is_disk_full(e):
                    self.disk_full_until = time.monotonic() + DISK_FULL_BACKOFF
                    log.warning("hot tier %s is full: serving misses uncached for %.0fs",
                                self.tier.root, DISK_FULL_BACKOFF)
                    self.tier.request_eviction(force=True)
            fetch.fail(e if isinstance(e, Exception) else UpstreamUnavailable("fetch cancelled"))
            if not isinstance(e, MirrorError | asyncio.CancelledError):
                log.exception("fetch of %s from %s failed", digest, up)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self._fetches.pop(str(digest), None)
            self.tier.unpin(digest)

    async def _fill(self, client: UpstreamClient | None, repo: str, digest: Digest,
                    fetch: BlobFetch) -> None:
        """Download into fetch.temp (cold tier first, unless resuming a part), verify, commit."""
        if fetch.temp.written == 0 and await self._from_cold(digest, fetch, client is not None):
            self._from_cold_tier.add(fetch)
            await self.tier.commit(fetch.temp)
            fetch.finish()
            return
        if client is None:
            raise BlobUnknown(f"blob {digest} is in no cache tier and the mirror is offline")
        if await self._from_peers(client, repo, digest, fetch):
            await self.tier.commit(fetch.temp)  # verified here like upstream bytes
            fetch.finish()
            return
        gauge = self.metrics.inflight.labels(client.name, "blob")
        sem = self._slot(client)
        if sem.locked():
            self.metrics.queued.labels(client.name).inc()
            try:
                await sem.acquire()
            finally:
                self.metrics.queued.labels(client.name).dec()
        else:
            await sem.acquire()
        gauge.inc()
        try:
            if fetch.size is None or fetch.temp.written < fetch.size:  # else a resumed part
                await self._download(client, repo, digest, fetch)  # that was complete already
        finally:
            gauge.dec()
            sem.release()
        await self.tier.commit(fetch.temp)  # also queues the copy to the cold tier
        fetch.finish()

    async def _from_cold(self, digest: Digest, fetch: BlobFetch, can_resume: bool) -> bool:
        """Fill the fetch from the cold tier. True when every byte came from there; False
        when the cold tier does not have it, or broke off and the upstream can resume from
        fetch.temp.written (a Range request, like any interrupted upstream download)."""
        if self.tiers is None:
            return False

        def started(size: int) -> None:
            self._sources[fetch] = "cold"
            fetch.set_size(size)

        try:
            return await self.tiers.fill(digest, fetch.temp, started, fetch.progress)
        except (VerificationError, asyncio.CancelledError):
            raise
        except Exception as e:  # object-store or read errors: the upstream can take over
            if not can_resume:
                raise UpstreamUnavailable(f"cold tier read of {digest} failed") from e
            log.warning("cold tier read of %s broke off after %d bytes (%s); resuming from "
                        "upstream", digest, fetch.temp.written, type(e).__name__)
            return False

    async def _from_peers(self, client: UpstreamClient, repo: str, digest: Digest,
                          fetch: BlobFetch) -> bool:
        """cluster: the owner's bytes (it fetches once for the cluster). False: fetch here."""
        if self.peers is None or fetch in self._local_only:
            return False
        source = self._sources.get(fetch)
        self._sources[fetch] = "peer"
        if await self.peers.fill(client.name, repo, digest, fetch,
                                 self._background if self.shared is None else None):
            return True
        if source is None:
            self._sources.pop(fetch, None)
        else:
            self._sources[fetch] = source
        return False

    async def _download(self, client: UpstreamClient, repo: str, digest: Digest,
                        fetch: BlobFetch) -> None:
        writer = WriteBehind(fetch, self._background if self.shared is None else None,
                             self.direct_io, self.budget)
        try:
            await download_into(client, repo, digest, fetch, writer, self.metrics, self.tier)
        finally:
            await writer.close()  # never leave a write running into a file about to be closed
