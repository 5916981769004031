"""Write-behind to the cold tier: every verified blob, manifest and tag record is copied there
in the background, a few at a time, retried with backoff, and remembered in the database's
`pending_uploads` table so that a restart resumes what was not yet copied.

A job names what to copy, never the bytes: at upload time the blob is read from the hot tier
and the tag record from the tag index, so a retry always sends the current truth."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.observe.metrics import Metrics
from mirror.oci.errors import DigestInvalid
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.disk import blob_path

if TYPE_CHECKING:  # obstore is loaded only with an object store (mirror/pull/stack.py)
    from mirror.store.objectstore import ColdTier

log = logging.getLogger("mirror.store.uploads")
RETRY_MIN = 1.0
RETRY_MAX = 300.0

# (upstream, repo, tag) -> {"digest", "media_type", "size", "checked_at"}, or None
TagSource = Callable[[str, str, str], dict[str, Any] | None]


def tag_job_key(upstream: str, repo: str, tag: str) -> str:
    return "tag " + json.dumps([upstream, repo, tag])


@dataclass(slots=True)
class Job:
    key: str
    kind: str  # blob | manifest | tag
    attempts: int = 0
    again: bool = False  # queued again while running: copy once more when this run ends
    running: asyncio.Future[bool] | None = None
    retry: asyncio.TimerHandle | None = field(default=None, repr=False)


class Uploader:
    def __init__(self, blob_dir: Path, cold: ColdTier, db: Database, metrics: Metrics,
                 concurrency: int = 4, *, tag_source: TagSource | None = None,
                 on_uploaded: Callable[[str, int], None] | None = None) -> None:
        # The hot tier's files are read by path, not through the DiskTier: the tier tells this
        # queue about every commit (on_commit), so the queue exists before the tier does; and
        # in a worker process a file another worker committed is read all the same.
        self.blob_dir = blob_dir
        self.cold = cold
        self.db = db
        self.metrics = metrics
        self.concurrency = max(1, concurrency)
        self.tag_source = tag_source  # the current tag record, read when its upload runs
        self.on_uploaded = on_uploaded  # (kind, bytes) after a copy
        self._jobs: dict[str, Job] = {}
        self._queue: asyncio.Queue[str] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._idle: asyncio.Event | None = None

    # -- lifetime -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        rows = self.db.query("SELECT digest, kind FROM pending_uploads ORDER BY queued_at")
        for key, kind in rows:
            if str(key) not in self._jobs:
                self._jobs[str(key)] = Job(str(key), str(kind))
        if rows:
            log.info("resuming %d pending uploads to the cold tier", len(rows))
        for key in list(self._jobs):  # also what was queued before start()
            self._enqueue(key)
        self._update_idle()
        self._workers = [asyncio.create_task(self._work(), name=f"cold-upload-{i}")
                         for i in range(self.concurrency)]

    async def close(self) -> None:
        """Stop copying; what is unfinished stays in pending_uploads for the next start."""
        running: list[asyncio.Future[Any]] = [
            j.running for j in self._jobs.values() if j.running is not None]
        for job in self._jobs.values():
            if job.retry is not None:
                job.retry.cancel()
        for fut in [*self._workers, *running]:
            fut.cancel()
        await asyncio.gather(*self._workers, *running, return_exceptions=True)
        self._workers = []

    # -- queueing -------------------------------------------------------------------------------

    def committed(self, digest: Digest, is_manifest: bool) -> None:
        """The hot tier's on_commit: everything it takes in is copied; content that came from
        the cold tier costs one HEAD there ("present") and no upload."""
        self._add(str(digest), "manifest" if is_manifest else "blob")

    def queue_blob(self, digest: Digest) -> None:
        self._add(str(digest), "blob")

    def queue_manifest(self, digest: Digest) -> None:
        self._add(str(digest), "manifest")

    def queue_tag(self, upstream: str, repo: str, tag: str) -> None:
        self._add(tag_job_key(upstream, repo, tag), "tag")

    def pending(self) -> int:
        return len(self._jobs)

    def _add(self, key: str, kind: str, persist: bool = True) -> None:
        job = self._jobs.get(key)
        if job is not None:
            if job.running is not None:
                job.again = True  # copying an older state (a tag that moved on): copy again
            return
        self._jobs[key] = Job(key, kind)
        if persist:
            self.db.write("INSERT OR REPLACE INTO pending_uploads (digest, kind, queued_at) "
                          "VALUES (?, ?, ?)", (key, kind, time.time()))
        self._enqueue(key)

    def _enqueue(self, key: str) -> None:
        job = self._jobs.get(key)
        if job is None or self._queue is None:
            return  # done meanwhile, or not started yet (start() queues what is pending)
        job.retry = None
        self._queue.put_nowait(key)
        self._update_idle()

    def _update_idle(self) -> None:
        self.metrics.cold_pending.set(len(self._jobs))
        if self._idle is None:
            return
        if self._jobs:
            self._idle.clear()
        else:
            self._idle.set()

    # -- running --------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            key = await self._queue.get()
            job = self._jobs.get(key)
            if job is None or job.running is not None or job.retry is not None:
                continue
            await self._run(job)

    def _run(self, job: Job) -> asyncio.Future[bool]:
        """Start the job (once) and return its future: True when copied or nothing to copy."""
        if job.running is not None:
            return job.running
        fut: asyncio.Future[bool] = asyncio.ensure_future(self._copy(job))
        job.running = fut
        return fut

    def is_pending(self, key: str) -> bool:
        """Whether a copy of `key` is still pending here or in another worker process sharing
        the database (each worker queues what it commits; one of them evicts)."""
        return key in self._jobs or bool(self.db.query(
            "SELECT 1 FROM pending_uploads WHERE digest=?", (key,)))

    async def ensure(self, key: str, wait: float) -> bool:
        """Finish the pending upload of `key` now (the evictor needs the hot copy gone), also
        one another worker queued: the file is on the shared disk. True when nothing is
        pending any more."""
        job = self._jobs.get(key) or self._adopt(key)
        if job is None:
            return True
        if job.retry is not None:
            job.retry.cancel()
            job.retry = None
        try:
            return await asyncio.wait_for(asyncio.shield(self._run(job)), wait)
        except TimeoutError:
            return False

    def _adopt(self, key: str) -> Job | None:
        """A copy another process sharing the index queued (server.workers: the worker that
        committed the file) and has not finished: taken over here, so the evictor does not
        delete a file whose only copy it is. The other worker's own run then finds the cold
        copy present, or the hot file gone."""
        row = self.db.query_one("SELECT kind FROM pending_uploads WHERE digest=?", (key,))
        if row is None:
            return None
        job = self._jobs[key] = Job(key, str(row[0]))
        self._update_idle()
        return job

    async def drain(self, wait: float) -> bool:
        """Wait until nothing is pending (command line, tests). False on timeout."""
        if self._idle is None:
            return not self._jobs
        try:
            await asyncio.wait_for(self._idle.wait(), wait)
        except TimeoutError:
            return False
        return True

    async def _copy(self, job: Job) -> bool:
        try:
            sent = await self._upload(job)
        except asyncio.CancelledError:
            job.running = None
            raise
        except Exception as e:  # object-store errors come in many types; all are retried
            job.attempts += 1
            job.running = None
            delay = min(RETRY_MAX, RETRY_MIN * 2 ** (job.attempts - 1))
            self.metrics.cold_uploads.labels(job.kind, "error").inc()
            log.warning("upload of %s %s to the cold tier failed (attempt %d, retry in %.0fs): "
                        "%s: %s", job.kind, job.key[:80], job.attempts, delay,
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            job.retry = asyncio.get_running_loop().call_later(delay, self._enqueue, job.key)
            return False
        result = "gone" if sent is None else "present" if sent == 0 else "ok"
        self.metrics.cold_uploads.labels(job.kind, result).inc()
        if sent and self.on_uploaded is not None:
            self.on_uploaded(job.kind, sent)
        job.running = None
        if job.again:
            job.again, job.attempts = False, 0
            self._enqueue(job.key)
            return True
        self._jobs.pop(job.key, None)
        self.db.write("DELETE FROM pending_uploads WHERE digest=?", (job.key,))
        self._update_idle()
        return True

    async def _upload(self, job: Job) -> int | None:
        """Copy one job's content. Returns bytes sent, 0 when the cold tier already had it, or
        None when there is nothing left to copy (the hot copy is gone)."""
        if job.kind == "tag":
            return await self._upload_tag(job.key)
        try:
            digest = Digest.parse(job.key)
        except DigestInvalid:
            return None
        if job.kind == "manifest":
            return await self._upload_manifest(digest)
        path = blob_path(self.blob_dir, digest)
        size = await asyncio.get_running_loop().run_in_executor(None, _size, path)
        if size is None:
            return None  # evicted (maybe by another worker) or replaced: nothing to copy
        if await self.cold.stat(digest) == size:
            return 0  # another node copied it already
        try:
            await self.cold.put_file(digest, path)
        except FileNotFoundError:
            return None  # evicted while it was being copied
        return size


    async def _upload_manifest(self, digest: Digest) -> int | None:
        path = blob_path(self.blob_dir, digest)
        body = await asyncio.get_running_loop().run_in_executor(None, _read, path)
        if body is None:
            return None
        if await self.cold.has_manifest(digest):
            return 0
        rows = self.db.query("SELECT media_type FROM content WHERE digest=?", (str(digest),))
        media_type = rows[0][0] if rows and rows[0][0] else None
        await self.cold.put_manifest(digest, body, media_type)
        return len(body)

    async def _upload_tag(self, key: str) -> int | None:
        try:
            upstream, repo, tag = json.loads(key[len("tag "):])
        except ValueError:
            return None
        record = self.tag_source(upstream, repo, tag) if self.tag_source is not None else None
        if record is None or not record.get("digest"):
            return None
        digest = Digest.parse(str(record["digest"]))
        # The manifest goes first: a node that reads the tag record must find its manifest.
        if (not await self.cold.has_manifest(digest)
                and await self._upload_manifest(digest) is None):
            return None  # neither here nor there: the record would point at nothing
        await self.cold.put_tag(upstream, repo, tag, record)
        return 1


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
