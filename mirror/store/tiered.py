"""The two tiers together: a hot local disk within its budget in front of a cold object store
that every node shares.

- Read-through: hot, then cold, then (the caller's business) upstream. Content read from the
  cold tier is written into a hot temp file as it streams and verified before it is committed
  there (promotion): the cold tier is shared, so it is trusted no more than an upstream.
- Write-behind: whatever the hot tier commits from upstream is queued for upload (uploads.py).
- Eviction never loses content: before the hot tier deletes a victim whose upload is still
  pending, the guard finishes that upload (bounded wait), so an evicted blob is in the cold tier.
- Age: with cache.object_store.max_age, nodes mark the blobs they use (at most every
  max_age/4 per blob and node) and the periodic job deletes cold objects unused for that long."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from mirror.config import Config
from mirror.observe.metrics import Metrics
from mirror.oci.errors import VerificationError
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.objectstore import ColdManifest, ColdTier, build_store
from mirror.store.temp import TempBlob
from mirror.store.uploads import TagSource, Uploader

log = logging.getLogger("mirror.store.tiered")
WRITE_BATCH = 1024 * 1024
GUARD_TIMEOUT = 60.0  # longest an eviction waits for a victim's upload before deleting anyway
GC_INTERVAL = 600.0  # periodic job: cold usage metrics and max_age expiry
GC_FIRST = 5.0


@dataclass(frozen=True, slots=True)
class GcReport:
    hot_evicted: int
    hot_freed: int
    hot_used: int
    hot_max: int
    uploads_left: int
    cold_removed: int
    cold_freed: int
    cold_objects: int
    cold_bytes: int


class TieredStore:
    """BlobStore over both tiers, plus the cold-tier services the pull path needs."""

    name = "tiered"

    def __init__(self, hot: DiskTier, cold: ColdTier, db: Database, metrics: Metrics, *,
                 upload_concurrency: int = 4, max_age: float | None = None,
                 gc_interval: float = GC_INTERVAL) -> None:
        self.hot = hot
        self.cold = cold
        self.metrics = metrics
        self.max_age = max_age
        self.gc_interval = gc_interval
        self.uploads = Uploader(hot, cold, db, metrics, upload_concurrency)
        self.uploads.on_uploaded.append(self._uploaded)
        self._cold_objects = 0
        self._cold_bytes = 0
        self._marked: LRUCache[str, float] = LRUCache(maxsize=200_000)
        self._tasks: set[asyncio.Task[None]] = set()
        self._periodic: asyncio.Task[None] | None = None
        hot.evict_guard = self._guard
        hot.commit_hooks.append(self._committed)
        if max_age is not None:
            hot.touch_hooks.append(self._touched)

    @property
    def tag_source(self) -> TagSource | None:
        return self.uploads.tag_source

    @tag_source.setter
    def tag_source(self, source: TagSource | None) -> None:
        self.uploads.tag_source = source

    # -- lifetime -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.uploads.start()

    def start_periodic(self) -> None:
        """The server's maintenance job (command-line tools run `gc()` themselves)."""
        if self._periodic is None:
            self._periodic = asyncio.create_task(self._run_periodic(), name="cold-gc")

    async def close(self) -> None:
        if self._periodic is not None:
            self._periodic.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *([self._periodic] if self._periodic else []),
                             return_exceptions=True)
        await self.uploads.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- write-behind ---------------------------------------------------------------------------

    def queue_blob(self, digest: Digest) -> None:
        self.uploads.queue_blob(digest)

    def queue_manifest(self, digest: Digest) -> None:
        self.uploads.queue_manifest(digest)

    def queue_tag(self, upstream: str, repo: str, tag: str) -> None:
        self.uploads.queue_tag(upstream, repo, tag)

    def _committed(self, digest: Digest, is_manifest: bool) -> None:
        # Everything the hot tier takes in is copied; content that came from the cold tier
        # costs one HEAD there ("present") and no upload.
        if is_manifest:
            self.queue_manifest(digest)
        else:
            self.queue_blob(digest)

    def _uploaded(self, kind: str, nbytes: int) -> None:
        if kind == "tag":
            return
        self._cold_objects += 1
        self._cold_bytes += nbytes
        self._publish_cold()

    def _publish_cold(self) -> None:
        self.metrics.cache_objects.labels(self.cold.name).set(self._cold_objects)
        self.metrics.cache_bytes.labels(self.cold.name).set(self._cold_bytes)

    async def _guard(self, digest: Digest) -> None:
        if not await self.uploads.ensure(str(digest), GUARD_TIMEOUT):
            log.warning("evicting %s from the hot tier before its copy to the cold tier "
                        "finished: the next request for it goes upstream", digest)

    # -- reading from the cold tier -------------------------------------------------------------

    async def fill(self, digest: Digest, temp: TempBlob, started: Callable[[int], None],
                   progress: Callable[[int], None]) -> bool:
        """Stream the cold copy of `digest` into `temp` (from temp.written on). False when the
        cold tier does not have it (or cannot be asked) and nothing was written; exceptions
        after `started` mean a partial copy the caller may resume elsewhere. The caller
        commits `temp`, which verifies the digest."""
        try:
            size = await self.cold.stat(digest)
        except Exception as e:  # any object-store failure: the cold tier is best effort
            log.warning("cold tier lookup of %s failed: %s: %s", digest, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "")
            return False
        if size is None:
            return False
        if temp.expected_size is not None and size != temp.expected_size:
            log.warning("cold copy of %s has %d bytes, the manifest says %d; not using it",
                        digest, size, temp.expected_size)
            return False
        started(size)
        loop = asyncio.get_running_loop()
        buf = bytearray()
        async for chunk in self.cold.read(digest, temp.written):
            buf += chunk
            if len(buf) >= WRITE_BATCH:
                data, buf = bytes(buf), bytearray()
                await loop.run_in_executor(None, temp.write_sync, data)
                progress(len(data))
            if temp.written + len(buf) > size:
                raise VerificationError(f"cold tier sent more than {size} bytes for {digest}")
        if buf:
            await loop.run_in_executor(None, temp.write_sync, bytes(buf))
            progress(len(buf))
        if temp.written != size:
            raise OSError(f"cold copy of {digest} ended after {temp.written} of {size} bytes")
        self.mark_used(digest)
        return True

    def discard_cold(self, digest: Digest) -> None:
        """The cold copy did not verify: delete it so nobody reads it again."""
        self.metrics.verify_failures.labels("cold", "blob").inc()
        log.warning("cold tier copy of %s did not verify; deleting it", digest)
        self._spawn(self.cold.delete(digest), f"cold-discard {str(digest)[:19]}")

    async def promote(self, digest: Digest) -> bool:
        """Copy a cold blob into the hot tier (verified). True when it is hot now."""
        if self.hot.entry(digest) is not None:
            return True
        temp = self.hot.new_temp(digest, None)
        self.hot.pin(digest)
        try:
            try:
                ok = await self.fill(digest, temp, lambda _: None, lambda _: None)
            except BaseException:
                temp.abort_sync()
                raise
            if not ok:
                temp.abort_sync()
                return False
            try:
                await self.hot.commit(temp)
            except VerificationError:
                self.discard_cold(digest)
                return False
            return True
        finally:
            self.hot.unpin(digest)

    async def manifest(self, digest: Digest) -> ColdManifest | None:
        """A manifest from the cold tier (verified), stored in the hot tier on the way."""
        try:
            m = await self.cold.get_manifest(digest)
        except Exception as e:
            log.warning("cold tier read of manifest %s failed: %s", digest, type(e).__name__)
            return None
        if m is None:
            return None
        if self.hot.entry(digest) is None:
            await self.hot.put_bytes(digest, m.body, m.media_type, is_manifest=True)
        self.mark_used(digest)
        return m

    async def tag(self, upstream: str, repo: str, tag: str) -> dict[str, object] | None:
        try:
            return await self.cold.get_tag(upstream, repo, tag)
        except Exception as e:
            log.warning("cold tier read of tag %s/%s:%s failed: %s", upstream, repo, tag,
                        type(e).__name__)
            return None

    # -- use marks for max_age ------------------------------------------------------------------

    def _touched(self, digest: Digest) -> None:
        self.mark_used(digest)

    def mark_used(self, digest: Digest) -> None:
        if self.max_age is None:
            return
        key, now = str(digest), time.time()
        last = self._marked.get(key)
        if last is not None and now - last < min(self.max_age / 4, 86400.0):
            return
        self._marked[key] = now
        self._spawn(self._mark(digest), f"cold-mark {key[:19]}")

    async def _mark(self, digest: Digest) -> None:
        try:
            await self.cold.mark_used(digest)
        except Exception as e:
            log.info("could not mark %s used in the cold tier: %s", digest, type(e).__name__)

    # -- BlobStore contract ---------------------------------------------------------------------

    async def stat(self, digest: Digest) -> int | None:
        size = await self.hot.stat(digest)
        return size if size is not None else await self.cold.stat(digest)

    async def read(self, digest: Digest, start: int = 0,
                   end: int | None = None) -> AsyncIterator[bytes]:
        """From the hot tier; a cold-only blob is promoted (verified) first."""
        self.hot.pin(digest)
        try:
            if self.hot.entry(digest) is None and not await self.promote(digest):
                raise FileNotFoundError(f"{digest} is in neither tier")
            self.hot.touch(digest)
            async for chunk in self.hot.read(digest, start, end):
                yield chunk
        finally:
            self.hot.unpin(digest)

    async def put_file(self, digest: Digest, path: Path) -> None:
        await self.hot.put_file(digest, path)  # queued for the cold tier by _committed

    async def delete(self, digest: Digest) -> bool:
        hot = await self.hot.delete(digest)
        cold = await self.cold.delete(digest)
        return hot or cold

    async def list(self) -> AsyncIterator[tuple[Digest, int]]:
        seen: set[str] = set()
        async for d, size in self.hot.list():
            seen.add(str(d))
            yield d, size
        async for d, size in self.cold.list():
            if str(d) not in seen:
                yield d, size

    # -- garbage collection ---------------------------------------------------------------------

    async def gc(self, upload_timeout: float = 300.0) -> GcReport:
        """Enforce the hot budget now (pending uploads first, so nothing is lost), then expire
        cold objects unused for max_age, then recount the cold tier."""
        await self.uploads.drain(upload_timeout)
        evicted, freed = (await self.hot.evict()) if self.hot.used > self.hot.high else (0, 0)
        removed = cold_freed = 0
        if self.max_age is not None:
            removed, cold_freed = await self.cold.expire(self.max_age)
            if removed:
                log.info("cold tier: removed %d objects (%d bytes) unused for %.0fs", removed,
                         cold_freed, self.max_age)
        self._cold_objects, self._cold_bytes = await self.cold.usage()
        self._publish_cold()
        return GcReport(evicted, freed, self.hot.used, self.hot.max_size, self.uploads.pending(),
                        removed, cold_freed, self._cold_objects, self._cold_bytes)

    async def _run_periodic(self) -> None:
        delay = GC_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = self.gc_interval
            try:
                await self.gc(upload_timeout=0.0)
            except Exception:
                log.exception("cold tier maintenance failed")


def build_tiered(config: Config, hot: DiskTier, db: Database, metrics: Metrics) -> TieredStore:
    os_config = config.cache.object_store
    assert os_config is not None
    return TieredStore(hot, ColdTier(build_store(os_config)), db, metrics,
                       upload_concurrency=os_config.upload_concurrency, max_age=os_config.max_age)
