"""Hot tier: verified content in local files named by digest, within a size budget.

Layout under cache.dir:  blobs/<alg>/<2 hex>/<hex>  (content)   tmp/  (downloads in progress)
A file appears under blobs/ only by os.replace() of a temp file whose digest was checked and
whose bytes were fsynced, so a crash at any moment leaves either the whole verified file or
nothing (plus a temp file, swept at start)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mirror.observe.metrics import Metrics
from mirror.oci.errors import CacheConflict, VerificationError
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.evictlog import record_evictions
from mirror.store.temp import TempBlob

log = logging.getLogger("mirror.store.disk")
ACCESS_RESOLUTION = 60.0  # last-access times closer than this are not rewritten


@dataclass(slots=True)
class Entry:
    size: int
    media_type: str | None
    is_manifest: bool
    last_access: float


class DiskTier:
    name = "hot"

    def __init__(self, root: Path, db: Database, max_size: int, metrics: Metrics,
                 high_watermark: float = 0.95, low_watermark: float = 0.85, *,
                 evicting: bool = True,
                 on_commit: Callable[[Digest, bool], None] | None = None,
                 on_touch: Callable[[Digest], None] | None = None) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        self._db = db
        self.max_size = max_size
        self.high = int(max_size * high_watermark)
        self.low = int(max_size * low_watermark)
        self._metrics = metrics
        self._entries: dict[str, Entry] = {}
        self._pins: dict[str, int] = {}
        self.used = 0
        # Told after every write, whichever path it took (fetch, manifest, promotion, import):
        # (digest, is_manifest). With a cold tier, the upload queue (store/uploads.py).
        self._on_commit = on_commit
        self._on_touch = on_touch  # told on every access (cold-tier use marks for max_age)
        # False in all but one of several worker processes sharing this directory: one process
        # keeps the budget, from the index all of them write (mirror/fetch/shared.py).
        self.evicting = evicting
        # Set when a write crosses the high watermark (or the disk filled up): the evictor
        # (store/eviction.py) wakes on it. A commit never waits for eviction.
        self.eviction_requested = asyncio.Event()
        self._forced = False
        metrics.cache_budget.labels(self.name).set(max_size)

    # -- start-up ---------------------------------------------------------------------------

    def open_sync(self, sweep: bool = True) -> None:
        """Sweep leftovers and rebuild the accounting from what is really on disk. sweep=False
        for a worker process: tmp/ then holds other workers' downloads (the supervisor sweeps
        it once, before any worker starts)."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        swept = 0
        for p in self.tmp_dir.iterdir() if sweep else ():
            try:
                p.unlink()
                swept += 1
            except OSError:
                pass
        if swept:
            log.info("removed %d unfinished downloads from %s", swept, self.tmp_dir)
        known = {row[0]: row for row in self._db.query(
            "SELECT digest, size, media_type, is_manifest, last_access FROM content")}
        on_disk: dict[str, Entry] = {}
        for alg_dir in self.blob_dir.iterdir():
            for sub in alg_dir.iterdir():
                for f in sub.iterdir():
                    key = f"{alg_dir.name}:{f.name}"
                    try:
                        Digest.parse(key)
                        st = f.stat()
                    except (ValueError, OSError):
                        continue
                    row = known.get(key)
                    if row is not None and row[1] == st.st_size:
                        on_disk[key] = Entry(st.st_size, row[2], bool(row[3]), row[4])
                    else:
                        # On disk but unknown to the index (crash between rename and index
                        # write): the name was verified before the rename, so keep it.
                        on_disk[key] = Entry(st.st_size, None, False, st.st_mtime)
        stmts: list[tuple[str, tuple[Any, ...]]] = [
            ("DELETE FROM content WHERE digest=?", (d,)) for d in known if d not in on_disk]
        stmts += [("INSERT OR REPLACE INTO content (digest, size, media_type, is_manifest, "
                   "last_access, stored_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (d, e.size, e.media_type, int(e.is_manifest), e.last_access, e.last_access))
                  for d, e in on_disk.items() if d not in known or known[d][1] != e.size]
        if stmts:
            self._db.write_now(stmts)
        self._entries = on_disk
        self.used = sum(e.size for e in on_disk.values())
        self._publish()

    def _publish(self) -> None:
        self._metrics.cache_bytes.labels(self.name).set(self.used)
        self._metrics.cache_objects.labels(self.name).set(len(self._entries))

    # -- lookups (sync, no I/O: answered from the in-memory accounting) -----------------------

    def path(self, digest: Digest) -> Path:
        return blob_path(self.blob_dir, digest)

    @property
    def objects(self) -> int:
        return len(self._entries)

    def contents(self) -> list[tuple[str, Entry]]:
        """A snapshot of what the tier holds: (digest, entry)."""
        return list(self._entries.items())

    def entry(self, digest: Digest) -> Entry | None:
        return self._entries.get(str(digest))

    def touch(self, digest: Digest) -> None:
        e = self._entries.get(str(digest))
        if e is None:
            return
        if self._on_touch is not None:
            self._on_touch(digest)
        now = time.time()
        if now - e.last_access >= ACCESS_RESOLUTION:
            self._db.write("UPDATE content SET last_access=? WHERE digest=?", (now, str(digest)))
        e.last_access = now

    def pin(self, digest: Digest) -> None:
        key = str(digest)
        self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, digest: Digest) -> None:
        key = str(digest)
        n = self._pins.get(key, 0) - 1
        if n <= 0:
            self._pins.pop(key, None)
        else:
            self._pins[key] = n

    # -- writes -------------------------------------------------------------------------------

    def new_temp(self, digest: Digest, expected_size: int | None) -> TempBlob:
        return TempBlob(self.tmp_dir, digest, expected_size)

    def _commit_sync(self, temp: TempBlob) -> None:
        # Does not close temp.fd: readers dup() it on the loop thread at any moment, so the
        # descriptor is closed there, after this returns.
        if not temp.matches():
            raise VerificationError(
                f"content for {temp.digest} did not verify ({temp.written} bytes)")
        os.fsync(temp.fd)
        final = self.path(temp.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        # The rename goes by path, and what we verified is the file behind temp.fd: if the
        # path now names another file (tmp/ swept, and a fixed-name .part created again by
        # another process) or none, renaming it would publish bytes nobody checked.
        try:
            same = os.stat(temp.path).st_ino == os.fstat(temp.fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise CacheConflict(f"the download of {temp.digest} lost its temp file "
                                f"{temp.path.name} (removed or replaced by another process)")
        os.replace(temp.path, final)

    async def commit(self, temp: TempBlob, media_type: str | None = None,
                     is_manifest: bool = False) -> None:
        """Verify, fsync and move into place; on mismatch raise VerificationError and delete.
        A cancellation waits for the thread first: closing the descriptor under it could hit a
        reused one, and a file it renamed into place must be counted."""
        done = asyncio.get_running_loop().run_in_executor(None, self._commit_sync, temp)
        cancelled = False
        while not done.done():
            try:
                await asyncio.wait([done])
            except asyncio.CancelledError:
                cancelled = True
        error = done.exception()
        if error is not None:
            temp.abort_sync()
            raise error
        temp.close_sync()
        self._account(temp.digest, temp.written, media_type, is_manifest)
        if cancelled:
            raise asyncio.CancelledError

    def _account(self, digest: Digest, size: int, media_type: str | None,
                 is_manifest: bool) -> None:
        key = str(digest)
        now = time.time()
        old = self._entries.get(key)
        if old is not None:
            self.used -= old.size
        self._entries[key] = Entry(size, media_type, is_manifest, now)
        self.used += size
        self._db.write("INSERT OR REPLACE INTO content (digest, size, media_type, is_manifest, "
                       "last_access, stored_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (key, size, media_type, int(is_manifest), now, now))
        self._publish()
        if self.over_budget():
            self.eviction_requested.set()
        if self._on_commit is not None:
            self._on_commit(digest, is_manifest)

    def learn(self, digest: Digest, size: int, media_type: str | None = None,
              is_manifest: bool = False, last_access: float | None = None) -> None:
        """Content another process sharing this directory committed (server.workers > 1): it
        already wrote the index row and queued the cold-tier copy."""
        key = str(digest)
        old = self._entries.get(key)
        if old is not None:
            self.used -= old.size
        self._entries[key] = Entry(size, media_type, is_manifest,
                                   time.time() if last_access is None else last_access)
        self.used += size
        self._publish()

    def forget(self, digest: Digest) -> None:
        """The file is gone (another process evicted it): drop it from the accounting only."""
        e = self._entries.pop(str(digest), None)
        if e is not None:
            self.used -= e.size
            self._publish()

    def _write_bytes_sync(self, digest: Digest, data: bytes) -> None:
        temp = self.new_temp(digest, len(data))
        try:
            temp.write_sync(data)
            self._commit_sync(temp)
            temp.close_sync()
        except BaseException:
            temp.abort_sync()
            raise

    async def put_bytes(self, digest: Digest, data: bytes, media_type: str | None = None,
                        is_manifest: bool = False) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._write_bytes_sync, digest,
                                                         data)
        self._account(digest, len(data), media_type, is_manifest)

    def read_bytes_sync(self, digest: Digest) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    async def adopt(self, digest: Digest, path: Path, media_type: str | None = None,
                    is_manifest: bool = False) -> None:
        """Move a file under tmp/ that the caller already hashed and fsynced into place, with
        no second copy: a bundle import verifies every blob first and commits only then."""

        def move() -> int:
            final = self.path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            size = os.stat(path).st_size
            os.replace(path, final)
            return size

        size = await asyncio.get_running_loop().run_in_executor(None, move)
        self._account(digest, size, media_type, is_manifest)

    async def delete(self, digest: Digest) -> bool:
        key = str(digest)
        e = self._entries.pop(key, None)
        if e is None:
            return False
        self.used -= e.size
        self._db.write("DELETE FROM content WHERE digest=?", (key,))
        record_evictions(self._db, [digest])  # the other workers forget it too
        self._publish()
        try:
            await asyncio.get_running_loop().run_in_executor(None, os.unlink, self.path(digest))
        except FileNotFoundError:
            pass
        return True

    # -- budget ---------------------------------------------------------------------------------

    def has_room(self, nbytes: int) -> bool:
        """Whether the file system can take `nbytes` more (plus a margin for the index)."""
        st = os.statvfs(self.tmp_dir)
        return st.f_bavail * st.f_frsize > nbytes + 4 * 1024 * 1024

    def over_budget(self) -> bool:
        return self.used > self.high

    def request_eviction(self, force: bool = False) -> None:
        """Wake the evictor; `force`: evict to the low watermark even within the budget (the
        file system filled up before the budget did)."""
        self._forced = self._forced or force
        self.eviction_requested.set()

    def take_eviction_request(self) -> bool:
        """The evictor takes the signal; True when it was forced."""
        forced, self._forced = self._forced, False
        self.eviction_requested.clear()
        return forced

    def lru(self) -> list[tuple[str, int, float]]:
        """Eviction candidates, least recently used first: (digest, size, last access) of
        content nobody is reading or writing right now."""
        entries = sorted(self._entries.items(), key=lambda kv: kv[1].last_access)
        return [(k, e.size, e.last_access) for k, e in entries if k not in self._pins]

    async def evict_one(self, key: str, last_access: float) -> int | None:
        """Delete one victim the evictor chose; None (and nothing deleted) when it was read,
        rewritten or removed since it was chosen. Returns the bytes freed."""
        e = self._entries.get(key)
        if e is None or key in self._pins or e.last_access != last_access:
            return None
        return e.size if await self.delete(Digest.parse(key)) else None


def blob_path(blob_dir: Path, digest: Digest) -> Path:
    """Where verified content lives: blobs/<alg>/<2 hex>/<hex>."""
    return blob_dir / digest.algorithm / digest.hex[:2] / digest.hex


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def open_for_reading(path: Path) -> IO[bytes]:
    """A committed blob's file, opened to be served, without access-time updates: the index
    keeps when a blob was last served, and the first read of a file after its write would
    otherwise dirty its inode, which can wait for the file system's journal."""
    flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:  # O_NOATIME needs the file's owner (or CAP_FOWNER)
        fd = os.open(path, os.O_RDONLY)
    return open(fd, "rb")
