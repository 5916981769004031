"""The two tiers together: a hot local disk within its budget in front of a cold object store
that every node shares.

- Read-through: hot, then cold, then (the caller's business) upstream. Content read from the
  cold tier is written into a hot temp file as it streams and verified before it is committed
  there (promotion): the cold tier is shared, so it is trusted no more than an upstream.
- Lookups on a client's path are bounded (object_store.lookup_timeout); a store that does not
  answer in time, or fails, is skipped for COLD_BACKOFF seconds: a stalled object store costs a
  client at most one lookup timeout, then the upstream serves as if there were no cold tier.
- Write-behind: whatever the hot tier commits is queued for upload (uploads.py, told by the
  tier's on_commit). Eviction (eviction.py) finishes pending uploads of its victims first.
- Age: with cache.object_store.max_age, nodes mark the blobs they use (at most every
  max_age/4 per blob and node) and the periodic job deletes cold objects unused for that long."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cachetools import LRUCache

from mirror.observe.metrics import Metrics
from mirror.oci.errors import VerificationError
from mirror.oci.models import Digest
from mirror.store.disk import DiskTier
from mirror.store.temp import TempBlob
from mirror.store.uploads import Uploader

if TYPE_CHECKING:  # obstore (~5 MiB per process) is loaded only with an object store
    from mirror.store.objectstore import ColdManifest, ColdTier

log = logging.getLogger("mirror.store.tiered")
WRITE_BATCH = 1024 * 1024
GC_INTERVAL = 600.0  # periodic job: cold usage metrics and max_age expiry
GC_FIRST = 5.0
COLD_BACKOFF = 30.0  # seconds the cold tier is skipped on the request path after it failed
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GcReport:
    uploads_left: int
    cold_removed: int
    cold_freed: int
    cold_objects: int
    cold_bytes: int


class Background:
    """Fire-and-forget tasks that are still cancelled and awaited at close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class UseMarks:
    """Marks in the cold tier of when some node last used a blob (cache.object_store.max_age):
    the hot tier's on_touch, and every read from the cold tier."""

    def __init__(self, cold: ColdTier, max_age: float | None) -> None:
        self.cold = cold
        self.max_age = max_age
        self._marked: LRUCache[str, float] = LRUCache(maxsize=200_000)
        self.tasks = Background()

    def mark_used(self, digest: Digest) -> None:
        if self.max_age is None:
            return
        key, now = str(digest), time.time()
        last = self._marked.get(key)
        if last is not None and now - last < min(self.max_age / 4, 86400.0):
            return
        self._marked[key] = now
        self.tasks.spawn(self._mark(digest), f"cold-mark {key[:19]}")

    async def _mark(self, digest: Digest) -> None:
        try:
            await self.cold.mark_used(digest)
        except Exception as e:
            log.info("could not mark %s used in the cold tier: %s", digest, type(e).__name__)


class ColdUsage:
    """The cold tier's object and byte gauges: counted up per upload, recounted by gc."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.metrics = metrics
        self.name = name
        self.objects = 0
        self.bytes = 0

    def uploaded(self, kind: str, nbytes: int) -> None:
        """The uploader's on_uploaded."""
        if kind != "tag":
            self.set(self.objects + 1, self.bytes + nbytes)

    def set(self, objects: int, nbytes: int) -> None:
        self.objects, self.bytes = objects, nbytes
        self.metrics.cache_objects.labels(self.name).set(objects)
        self.metrics.cache_bytes.labels(self.name).set(nbytes)


class TieredStore:
    """The cold tier as the pull path reads it, and its maintenance."""

    def __init__(self, hot: DiskTier, cold: ColdTier, uploads: Uploader, metrics: Metrics, *,
                 marks: UseMarks, usage: ColdUsage, lookup_timeout: float = 1.0,
                 max_age: float | None = None, gc_interval: float = GC_INTERVAL) -> None:
        self.hot = hot
        self.cold = cold
        self.uploads = uploads
        self.metrics = metrics
        self.marks = marks
        self.usage = usage
        self.lookup_timeout = lookup_timeout
        self.max_age = max_age
        self.gc_interval = gc_interval
        self._skip_until = 0.0  # monotonic: the cold tier failed to answer; skip it until then
        self._tasks = Background()
        self._periodic: asyncio.Task[None] | None = None

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
            await asyncio.gather(self._periodic, return_exceptions=True)
        await self._tasks.close()
        await self.marks.tasks.close()
        await self.uploads.close()

    def queue_tag(self, upstream: str, repo: str, tag: str) -> None:
        self.uploads.queue_tag(upstream, repo, tag)

    # -- asking the cold tier on a client's path ------------------------------------------------

    async def _ask(self, question: Awaitable[T], what: str) -> T | None:
        """The answer, or None when the cold tier failed, was too slow, or is being skipped."""
        if time.monotonic() < self._skip_until:
            if asyncio.iscoroutine(question):
                question.close()  # never awaited: no "coroutine was never awaited" warning
            return None
        try:
            return await asyncio.wait_for(question, self.lookup_timeout)
        except Exception as e:  # any object-store failure: the cold tier is best effort
            self._skip_until = time.monotonic() + COLD_BACKOFF
            self.metrics.cold_skips.inc()
            reason = "no answer" if isinstance(e, TimeoutError) else type(e).__name__
            log.warning("cold tier %s failed (%s): skipping the cold tier for %.0fs", what,
                        reason, COLD_BACKOFF)
            return None

    async def fill(self, digest: Digest, temp: TempBlob, started: Callable[[int], None],
                   progress: Callable[[int], None]) -> bool:
        """Stream the cold copy of `digest` into `temp` (from temp.written on). False when the
        cold tier does not have it (or cannot be asked) and nothing was written; exceptions
        after `started` mean a partial copy the caller may resume elsewhere. The caller
        commits `temp`, which verifies the digest."""
        size = await self._ask(self.cold.stat(digest), f"lookup of {digest}")
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
        self.marks.mark_used(digest)
        return True

    def discard_cold(self, digest: Digest) -> None:
        """The cold copy did not verify: delete it so nobody reads it again."""
        self.metrics.verify_failures.labels("cold", "blob").inc()
        log.warning("cold tier copy of %s did not verify; deleting it", digest)
        self._tasks.spawn(self.cold.delete(digest), f"cold-discard {str(digest)[:19]}")

    async def manifest(self, digest: Digest) -> ColdManifest | None:
        """A manifest from the cold tier (verified), stored in the hot tier on the way."""
        m = await self._ask(self.cold.get_manifest(digest), f"read of manifest {digest}")
        if m is None:
            return None
        if self.hot.entry(digest) is None:
            await self.hot.put_bytes(digest, m.body, m.media_type, is_manifest=True)
        self.marks.mark_used(digest)
        return m

    async def size(self, digest: Digest) -> int | None:
        """The cold copy's size (a HEAD's answer), or None."""
        return await self._ask(self.cold.stat(digest), f"lookup of {digest}")

    async def tag(self, upstream: str, repo: str, tag: str) -> dict[str, object] | None:
        return await self._ask(self.cold.get_tag(upstream, repo, tag),
                               f"read of tag {upstream}/{repo}:{tag}")

    # -- maintenance ----------------------------------------------------------------------------

    async def gc(self, upload_timeout: float = 300.0) -> GcReport:
        """Finish pending uploads (so the hot tier's eviction loses nothing), expire cold
        objects unused for max_age, then recount the cold tier."""
        await self.uploads.drain(upload_timeout)
        removed = cold_freed = 0
        if self.max_age is not None:
            removed, cold_freed = await self.cold.expire(self.max_age)
            if removed:
                log.info("cold tier: removed %d objects (%d bytes) unused for %.0fs", removed,
                         cold_freed, self.max_age)
        self.usage.set(*await self.cold.usage())
        return GcReport(self.uploads.pending(), removed, cold_freed, self.usage.objects,
                        self.usage.bytes)

    async def _run_periodic(self) -> None:
        delay = GC_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = self.gc_interval
            try:
                await self.gc(upload_timeout=0.0)
            except Exception:
                log.exception("cold tier maintenance failed")
