"""One blob's bytes from the upstream into its temp file: the read loop (resume with Range
when the connection breaks) and the writer that hashes and writes batches off the event loop
while the next batches are read."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import aiohttp

from mirror.fetch.budget import MAX_AHEAD, AheadBudget, BodyReads
from mirror.fetch.coalesce import BlobFetch
from mirror.fetch.receive import BodyReceiver, Release
from mirror.observe.metrics import Metrics
from mirror.oci.errors import BlobUnknown, DiskFull, UpstreamRejected, UpstreamUnavailable, VerificationError
from mirror.oci.models import Digest
from mirror.store.disk import DiskTier
from mirror.store.temp import Chunk
from mirror.upstream.client import UpstreamClient

log = logging.getLogger("mirror.fetch.download")
WRITE_BATCH = 2 * 1024 * 1024  # bytes gathered before they go to the write and hash lanes
SYNC_EVERY = 32 * 1024 * 1024  # bytes written between background fdatasyncs of a download
RESUME_ATTEMPTS = 3
# Batches a lane's worker job takes before it gives its pool thread back (_Lane._work): the
# pools are shared by every download and by other file work (fsyncs, commits).
TURN = 2
After = Callable[[], None] | None  # called once a lane is done with a batch


async def download_into(client: UpstreamClient, repo: str, digest: Digest, fetch: BlobFetch,
                        writer: WriteBehind, metrics: Metrics, tier: DiskTier) -> None:
    """Stream the upstream's body into fetch.temp through `writer`, resuming with Range (up to
    RESUME_ATTEMPTS times) when the connection breaks mid-body. Verification is the commit's."""
    temp = fetch.temp
    attempts = 0
    while True:
        headers = {"Range": f"bytes={temp.written}-"} if temp.written else None
        resp = await client.open_blob(repo, str(digest), headers)
        try:
            if resp.status == 404:
                raise BlobUnknown(f"blob {digest} not found upstream", detail={"digest": str(digest)})
            skip = 0
            if temp.written and resp.status == 200:
                skip = temp.written  # upstream ignored Range: drop what we already have
            elif resp.status not in (200, 206) or (resp.status == 206 and not temp.written):
                raise UpstreamRejected(f"upstream {client.name} answered {resp.status} "
                                       f"for blob {digest}", resp.status)
            if not fetch.started.is_set():
                size = resp.content_length
                if temp.expected_size is not None and size is not None and size != temp.expected_size:
                    raise VerificationError(f"upstream size {size} for {digest} differs from "
                                            f"the manifest's {temp.expected_size}")
                size = size if size is not None else temp.expected_size
                if size == 0 and not digest.names_empty():
                    raise VerificationError(f"upstream length 0 for {digest}, which names "
                                            "non-empty content")
                if size is not None and not tier.has_room(size):
                    raise DiskFull(f"no room for {size} bytes of {digest} in {tier.root}")
                fetch.set_size(size)
            try:
                received = metrics.upstream_bytes.labels(client.name)
                await body_into(resp, fetch, writer, received.inc, "upstream", skip)
                return
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    TimeoutError) as e:
                attempts += 1
                if attempts > RESUME_ATTEMPTS:
                    raise UpstreamUnavailable(
                        f"upstream {client.name} broke off blob {digest} after "
                        f"{temp.written} bytes: {type(e).__name__}") from None
                log.info("resuming %s from %s at byte %d after %s", digest, client.name,
                         temp.written, type(e).__name__)
        finally:
            resp.release()


async def body_into(resp: aiohttp.ClientResponse, fetch: BlobFetch, writer: WriteBehind,
                    count: Callable[[int], None], source: str, skip: int = 0,
                    stall: float | None = None) -> None:
    """`resp`'s body (past its first `skip` bytes) into fetch.temp through `writer`, in
    WRITE_BATCH batches; `count` is told of every byte received. A body that breaks off
    (ClientError, or no bytes for `stall` seconds, or the session's sock_read when None) raises
    once what did arrive is hashed and written: the next attempt resumes from it. Big plain
    bodies are read past aiohttp (fetch.receive), the rest through its reader."""
    batch: list[Chunk] = []
    releases: list[Release] = []
    batch_len = 0
    receiver = BodyReceiver.take(resp, writer.budget, stall)
    # aiohttp keeps its default buffer limit: a paused read holds one read.
    reads = BodyReads(resp, writer.budget) if receiver is None else None
    try:
        try:
            async for chunk, release in (receiver.chunks() if receiver is not None
                                         else _aiohttp_chunks(resp, stall)):
                count(len(chunk))  # skipped or then rejected bytes cost bandwidth too
                if skip:
                    cut = min(skip, len(chunk))
                    # What is kept is copied and the buffer goes back at once: skipped
                    # buffers are never submitted, and a receiver whose buffers are all held
                    # reads no more.
                    chunk, skip = bytes(memoryview(chunk)[cut:]), skip - cut
                    if release is not None:
                        release(True)
                        release = None
                if release is not None:
                    releases.append(release)
                if not chunk:
                    continue
                batch.append(chunk)
                batch_len += len(chunk)
                if fetch.size is not None and writer.queued + batch_len > fetch.size:
                    raise VerificationError(f"{source} sent more than {fetch.size} bytes "
                                            f"for {fetch.key}")
                if batch_len >= WRITE_BATCH:
                    await writer.submit(batch, releases)
                    batch, batch_len, releases = [], 0, []
                    if reads is not None:
                        reads.adjust()
            if fetch.size is not None and writer.queued + batch_len < fetch.size:
                raise aiohttp.ClientPayloadError(f"{source} ended the body after "
                                                 f"{writer.queued + batch_len} of {fetch.size} bytes")
        except (aiohttp.ClientError, TimeoutError):
            if batch:  # kept: the next attempt resumes after it
                await writer.submit(batch, releases)
            await writer.drain()
            raise
        if batch:
            await writer.submit(batch, releases)
        await writer.drain()
    finally:
        if reads is not None:
            reads.close()
        if receiver is not None:
            receiver.close()


async def _aiohttp_chunks(resp: aiohttp.ClientResponse, stall: float | None
                          ) -> AsyncIterator[tuple[Chunk, Release | None]]:
    while True:
        async with asyncio.timeout(stall):  # None: the session's sock_read watches instead
            chunk, end = await resp.content.readchunk()
        if not chunk and not end:
            return
        yield chunk, None


class _Lane:
    """Runs `fn` on a download's batches in order, one at a time, on a worker thread that
    takes up to TURN batches from its queue per job: the loop only queues them and hears of
    each one done (a round trip through the loop per batch cost 1.5 ms each, bench/README.md).
    `backlog` is the bytes queued or running; the first error stops the lane. `on_change` is
    told whenever the backlog shrinks or the lane fails."""

    def __init__(self, fn: Callable[[Sequence[Chunk]], int | None],
                 pool: Callable[[], Executor | None], done: Callable[[int | None], None],
                 on_change: Callable[[], None]) -> None:
        self._fn, self._pool, self._done, self._on_change = fn, pool, done, on_change
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()  # guards _queue, _active and _stopped
        self._queue: collections.deque[tuple[Sequence[Chunk], int, After]] = collections.deque()
        self._active = False  # a worker job is taking batches
        self._stopped = False
        self.backlog = 0  # loop thread only
        self.running: asyncio.Future[None] | None = None  # the latest worker job
        self.error: BaseException | None = None
        self._moved: asyncio.Future[None] | None = None

    def put(self, batch: Sequence[Chunk], nbytes: int, after: After = None) -> None:
        """Queue `batch`; `after` is called on the loop once `fn` is done with it."""
        if self.error is not None:
            return
        self.backlog += nbytes
        with self._lock:
            self._queue.append((batch, nbytes, after))
            if self._active:
                return
            self._active = True
        self.running = self._loop.run_in_executor(self._pool(), self._work)

    def _work(self) -> None:
        """Worker thread: the queued batches in order, until none is left or TURN batches
        are done; then the job ends and the loop queues a new one (_again) for the rest, so
        that a download the reads keep feeding does not keep a pool thread to itself."""
        for _ in range(TURN):
            with self._lock:
                if self._stopped or not self._queue:
                    self._active = False
                    return
                batch, nbytes, after = self._queue.popleft()
            try:
                result = self._fn(batch)
            except BaseException as e:
                with self._lock:
                    self._queue.clear()
                    self._active = False
                self._loop.call_soon_threadsafe(self._failed, e)
                return
            self._loop.call_soon_threadsafe(self._finished, result, nbytes, after)
        self._loop.call_soon_threadsafe(self._again)  # _active stays set: put() only queues

    def _again(self) -> None:
        with self._lock:
            if self._stopped or not self._queue:
                self._active = False
                return
        self.running = self._loop.run_in_executor(self._pool(), self._work)

    def _finished(self, result: int | None, nbytes: int, after: After) -> None:
        if self.error is None:
            self.backlog -= nbytes
            self._done(result)
            if after is not None:
                after()
        self._wake()

    def _failed(self, error: BaseException) -> None:
        self.error = error
        self.backlog = 0
        self._wake()

    def _wake(self) -> None:
        self._on_change()
        if self._moved is not None and not self._moved.done():
            self._moved.set_result(None)

    async def wait_below(self, limit: int) -> None:
        """Until at most `limit` bytes are queued or running; raises the lane's error."""
        while self.error is None and self.backlog > limit:
            self._moved = self._loop.create_future()
            await self._moved
        if self.error is not None:
            raise self.error

    def stop(self) -> asyncio.Future[None] | None:
        """Drop the queued batches; the worker job (returned) finishes the batch it runs."""
        with self._lock:
            self._stopped = True
            self._queue.clear()
        return self.running


class WriteBehind:
    """Writes and hashes a download's batches on worker threads while the loop reads on.

    Each batch goes to two lanes at once, one that writes it into the temp file and one that
    hashes it, each taking its batches in order, so a batch costs the longer of the two
    rather than their sum. The loop does not wait for them until a lane is MAX_AHEAD bytes
    behind; meanwhile readers that keep up are sent the bytes from memory (BlobFetch.offer)
    and the file's progress is told as each write finishes. Large blobs are written with
    O_DIRECT (TempBlob.use_direct): nothing is left to flush when the commit fsyncs.

    With buffered writes, every SYNC_EVERY bytes an fdatasync starts in another thread, not
    waited for: the disk writes overlap the download, and the commit's fsync has little
    left to flush instead of the whole blob."""

    def __init__(self, fetch: BlobFetch, background: Callable[[], Executor] | None = None,
                 direct_min: int | None = None, budget: AheadBudget | None = None) -> None:
        self._fetch = fetch
        self.budget = budget if budget is not None else AheadBudget()
        self._held = 0  # bytes of ours counted in the budget
        self._background = background  # executor for batches that no client is reading yet
        self._direct_min = direct_min  # blobs of at least this size are written O_DIRECT
        temp = fetch.temp
        self._write = _Lane(temp.append_sync, self._pool, self._written, self._settle)
        self._hash = _Lane(self._hash_batch, self._pool, lambda _: None, self._settle)
        self._sync: asyncio.Future[None] | None = None
        self._flush: asyncio.Future[int] | None = None
        self._synced = temp.written
        self.queued = temp.written  # bytes handed to the lanes (written, or to be)

    def _pool(self) -> Executor | None:
        return self._background() if self._background and self._fetch.readers == 0 else None

    def _hash_batch(self, chunks: Sequence[Chunk]) -> None:
        self._fetch.temp.hash_sync(chunks)

    def _written(self, nbytes: int | None) -> None:
        if nbytes:
            self._fetch.progress(nbytes)
            self._start_sync()

    def _settle(self, stopped: bool = False) -> None:
        """Tell the budget what we hold now: a batch is held until both lanes are done."""
        held = 0 if stopped else max(self._write.backlog, self._hash.backlog)
        delta, self._held = held - self._held, held
        if delta:
            self.budget.change(delta)

    async def submit(self, chunks: Sequence[Chunk], releases: list[Release] | None = None) -> None:
        """Hand `chunks` to the lanes. `releases` give back the buffers some chunks are in
        (fetch.receive) once both lanes are done with them: for reuse, unless readers keep
        them (BlobFetch.recent; a queued client write may also hold a view of them), in
        which case they are lent, taken back only once nothing else refers to them."""
        if self._direct_min is not None and self.queued == 0 and (
                self._fetch.size or 0) >= self._direct_min:
            self._fetch.temp.use_direct()
        nbytes = sum(len(c) for c in chunks)
        self.queued += nbytes
        kept = self._fetch.offer(chunks)
        after = _after_both(releases, not kept) if releases else None
        self._write.put(chunks, nbytes, after)
        self._hash.put(chunks, nbytes, after)
        self._settle()
        await self._write.wait_below(MAX_AHEAD)
        await self._hash.wait_below(MAX_AHEAD)
        budget = self.budget
        while budget.used > budget.limit and self._held:  # a failed lane holds nothing
            await budget.changed()

    async def drain(self) -> None:
        """Until every batch is hashed and in the file (staged bytes too); raises a write's
        or a hash's error."""
        await self._write.wait_below(0)
        await self._hash.wait_below(0)
        if self._fetch.temp.staged:  # staged by this writer or by one before it (a resume)
            self._flush = asyncio.get_running_loop().run_in_executor(
                None, self._fetch.temp.flush_sync)
            self._fetch.progress(await self._flush)

    def _start_sync(self) -> None:
        temp = self._fetch.temp
        if temp.direct or temp.written - self._synced < SYNC_EVERY or (
                self._sync and not self._sync.done()):
            return
        self._synced = temp.written
        self._sync = asyncio.get_running_loop().run_in_executor(None, _datasync, temp.fd)

    async def close(self) -> None:
        """Stop, and wait for the write, hash and sync in flight even when cancelled: the
        caller closes the file next, and a thread using a closed (maybe reused) descriptor
        could hit another file."""
        cancelled = False
        for fut in (self._write.stop(), self._hash.stop(), self._flush):
            cancelled = await _wait_uncancelled(fut) or cancelled
        sync, self._sync = self._sync, None
        cancelled = await _wait_uncancelled(sync) or cancelled
        self._settle(stopped=True)
        if cancelled:
            raise asyncio.CancelledError


def _after_both(releases: list[Release], reuse: bool) -> Callable[[], None]:
    """Calls `releases` at its second call: once both lanes are done with a batch."""
    left = 2

    def after() -> None:
        nonlocal left
        left -= 1
        if not left:
            for release in releases:
                release(reuse)
    return after


async def _wait_uncancelled(fut: asyncio.Future[Any] | None) -> bool:
    """Wait for `fut` to finish whatever happens; True if this task was cancelled meanwhile."""
    cancelled = False
    while fut is not None and not fut.done():
        try:
            await asyncio.wait([fut])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def lower_priority() -> None:
    """Runs on each new background thread: nice 10 for this thread alone (Linux keeps a nice
    value per thread; setpriority with the thread id sets just that one)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except OSError:
        pass  # not allowed here: the writes then compete as equals, nothing else changes


def _datasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError:
        pass  # the commit's own fsync reports what matters
