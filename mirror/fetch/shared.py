"""The cross-process half of BlobFetcher, for server.workers > 1.

Within a process, BlobFetcher already runs one fetch per digest that every local client tails.
Here that one fetch either holds the digest's lock (mirror/cache/xprocess.py) and downloads, or
follows the download another worker runs: it polls the shared part file's size and feeds it to
the local BlobFetch as progress, so local clients are served by the same code (sendfile from
the growing file, last byte held back until the digest verified) wherever the download runs.
If the worker holding the lock dies, the lock is released by the kernel and a follower takes
over where the part file ends."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import cast

from mirror.fetch.coalesce import BlobFetch
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.evictlog import evictions_after, last_eviction
from mirror.store.xprocess import DigestLock, PartFiles, SharedPart, read_meta, relayed_error

log = logging.getLogger("mirror.fetch.shared")
POLL = 0.005  # seconds between looks at another worker's part file while clients wait on it
LOCK_POLL = 0.05  # seconds between checks that the worker downloading is still alive
INDEX_SLACK = 5.0  # seconds of overlap between index catch-ups (writes are batched)


class SharedDownloads:
    def __init__(self, tier: DiskTier, db: Database, poll: float = POLL,
                 lock_poll: float = LOCK_POLL) -> None:
        self.tier = tier
        self.db = db
        self.poll = poll
        self.lock_poll = lock_poll
        # Built before the tier's open_sync reads the directory: what changes from here on
        # is learned from the index.
        self._learned_until = time.time()
        self._evictions_seen = last_eviction(db)

    def media_type(self, digest: Digest) -> str | None:
        """The media type the worker that stored `digest` recorded (the upstream's)."""
        row = self.db.query_one("SELECT media_type FROM content WHERE digest=?", (str(digest),))
        return str(row[0]) if row is not None and row[0] else None

    def learn_from_index(self) -> int:
        """Catch the tier's accounting up with what every worker committed, read or evicted
        since the last call (the index rows they wrote, the eviction log): the worker that
        keeps the budget evicts by the whole directory's usage and last-access times, and
        every worker's answers and usage figures leave out what it evicted. Returns the rows
        learned."""
        forgotten = self.forget_evicted()
        since = self._learned_until - INDEX_SLACK  # writes reach the index in batches
        self._learned_until = time.time()
        # A commit sets last_access too, so one range on the last_access index finds both.
        rows = self.db.query("SELECT digest, size, media_type, is_manifest, last_access FROM "
                             "content WHERE last_access > ?", (since,))
        for key, size, media_type, is_manifest, last_access in rows:
            known = self.tier.entry(Digest.parse(key))
            if known is None or known.size != size or known.last_access < last_access:
                self.tier.learn(Digest.parse(key), size, media_type, bool(is_manifest),
                                max(last_access, known.last_access if known else 0.0))
        return len(rows) + forgotten

    def forget_evicted(self) -> int:
        """Drop what another process evicted since the last call from the accounting. An
        eviction whose file is back (committed again since) is not one any more."""
        self._evictions_seen, digests = evictions_after(self.db, self._evictions_seen)
        forgotten = 0
        for digest in digests:
            if self.tier.entry(digest) is not None and not os.path.exists(self.tier.path(digest)):
                self.tier.forget(digest)
                forgotten += 1
        return forgotten

    def new_temp(self, digest: Digest, expected_size: int | None) -> SharedPart:
        return SharedPart(self.tier, digest, expected_size)

    def learn_final(self, digest: Digest) -> bool:
        """True (and the tier knows it) when another worker committed `digest`."""
        try:
            st = os.stat(self.tier.path(digest))
        except FileNotFoundError:
            return False
        self.tier.learn(digest, st.st_size)
        return True

    def downloading_elsewhere(self, digest: Digest) -> bool:
        """Whether another worker holds the digest's lock (a prefetch need not follow it)."""
        lock = DigestLock(PartFiles.of(self.tier.tmp_dir, digest).lock)
        if lock.try_acquire():
            lock.release()
            return False
        return True

    async def run(self, fetch: BlobFetch, fill: Callable[[], Awaitable[None]]) -> None:
        """Bring `fetch` to done: download it (`fill`) while holding the digest's lock, or
        follow the worker that holds it; take over if that worker dies."""
        part = cast(SharedPart, fetch.temp)
        lock = DigestLock(part.files.lock)
        try:
            if not lock.try_acquire() and await self._follow(fetch, part, lock):
                return
            if part.final_ino() is not None:  # committed by another worker meanwhile
                self._finished(fetch, part)
                return
            resumed = await asyncio.get_running_loop().run_in_executor(None,
                                                                       part.take_over_sync)
            if resumed is not None:
                log.info("resuming the download of %s at byte %d, left by worker pid %d",
                         part.digest, part.written, resumed.pid)
                if not fetch.started.is_set():
                    fetch.set_size(resumed.size)
                if part.written > fetch.available:
                    fetch.progress(part.written - fetch.available)
            fetch.on_started = part.publish_start
            try:
                await fill()
            except asyncio.CancelledError:
                part.holding = False  # keep the part: another worker may resume it
                raise
            except BaseException as e:
                part.publish_error(e)
                part.discard_sync()
                raise
            part.committed_sync()
        finally:
            lock.release()

    async def _follow(self, fetch: BlobFetch, part: SharedPart, lock: DigestLock) -> bool:
        """Tail another worker's download. True when it completed (fetch finished); False
        when its worker is gone and this process now holds the lock."""
        since = time.time()
        next_lock_check = time.monotonic() + self.lock_poll
        while True:
            if part.fd < 0:
                meta = read_meta(part.files.meta)
                if (meta is not None and meta.error is None and meta.started
                        and part.open_tail(meta) and not fetch.started.is_set()):
                    fetch.set_size(meta.size)
            if part.fd >= 0:
                size = part.tail_size()
                if size > fetch.available:
                    fetch.progress(size - fetch.available)
            final = part.final_ino()
            if final is not None and (part.fd < 0 or final == part.ino):
                self._finished(fetch, part)
                return True
            if time.monotonic() >= next_lock_check:
                next_lock_check = time.monotonic() + self.lock_poll
                if lock.try_acquire():
                    return self._holder_gone(fetch, part, lock, since)
            await asyncio.sleep(self.poll)

    def _holder_gone(self, fetch: BlobFetch, part: SharedPart, lock: DigestLock,
                     since: float) -> bool:
        """The lock came free: the download finished, failed, or its worker died."""
        final = part.final_ino()
        if final is not None and (part.fd < 0 or final == part.ino):
            lock.release()
            self._finished(fetch, part)
            return True
        meta = read_meta(part.files.meta)
        if meta is not None and meta.error is not None and (
                meta.ino == part.ino or (part.fd < 0 and meta.written_at >= since)):
            lock.release()
            raise relayed_error(meta.error)
        return False

    def _finished(self, fetch: BlobFetch, part: SharedPart) -> None:
        """The blob is in the tier (committed here or by another worker)."""
        size = os.stat(self.tier.path(part.digest)).st_size
        self.tier.learn(part.digest, size)
        if not fetch.started.is_set():
            fetch.set_size(size)
        if size > fetch.available:
            fetch.progress(size - fetch.available)
        part.close_sync()  # readers hold their own descriptors; new clients find a hit
        fetch.finish()
