"""One blob's bytes from the upstream into its temp file: the read loop (resume with Range
when the connection breaks) and the writer that hashes and writes batches off the event loop
while the next batch is read."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import aiohttp

from mirror.fetch.coalesce import BlobFetch
from mirror.observe.metrics import Metrics
from mirror.oci.errors import BlobUnknown, DiskFull, UpstreamRejected, UpstreamUnavailable, VerificationError
from mirror.oci.models import Digest
from mirror.store.disk import DiskTier
from mirror.upstream.client import UpstreamClient

log = logging.getLogger("mirror.fetch.download")
WRITE_BATCH = 1024 * 1024  # bytes gathered before one hop to the writer thread
SYNC_EVERY = 32 * 1024 * 1024  # bytes written between background fdatasyncs of a download
RESUME_ATTEMPTS = 3


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
            received = metrics.upstream_bytes.labels(client.name)
            batch: list[bytes] = []
            batch_len = 0
            resp.content.set_read_chunk_size(WRITE_BATCH)  # fewer pause/resume cycles
            try:
                async for chunk, _ in resp.content.iter_chunks():
                    # Counted as received: bytes we skip or then reject still cost
                    # upstream bandwidth.
                    received.inc(len(chunk))
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                    batch.append(chunk)
                    batch_len += len(chunk)
                    if fetch.size is not None and writer.queued + batch_len > fetch.size:
                        raise VerificationError(f"upstream sent more than {fetch.size} bytes "
                                                f"for {digest}")
                    if batch_len >= WRITE_BATCH:
                        await writer.submit(batch)
                        batch, batch_len = [], 0
                if batch:
                    await writer.submit(batch)
                    batch = []
                await writer.drain()
                if fetch.size is not None and temp.written < fetch.size:
                    raise aiohttp.ClientPayloadError("upstream body ended early")
                return
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    TimeoutError) as e:
                if batch:
                    await writer.submit(batch)
                await writer.drain()
                attempts += 1
                if attempts > RESUME_ATTEMPTS:
                    raise UpstreamUnavailable(
                        f"upstream {client.name} broke off blob {digest} after "
                        f"{temp.written} bytes: {type(e).__name__}") from None
                log.info("resuming %s from %s at byte %d after %s", digest, client.name,
                         temp.written, type(e).__name__)
        finally:
            resp.release()


class WriteBehind:
    """Writes a download's batches in the executor while the loop reads the next batch off
    the socket. At most one write is in flight, so batches land (and are hashed) in order;
    readers are told about bytes only once they are in the file.

    Every SYNC_EVERY bytes it also starts an fdatasync in another thread, not waited for: the
    disk writes overlap the download, and the commit's fsync (after which clients get their
    last byte) has little left to flush instead of the whole blob."""

    def __init__(self, fetch: BlobFetch, background: Callable[[], Executor] | None = None) -> None:
        self._fetch = fetch
        self._background = background  # executor for batches that no client is reading yet
        self._pending: asyncio.Future[int] | None = None
        self._sync: asyncio.Future[None] | None = None
        self._synced = fetch.temp.written
        self.queued = fetch.temp.written  # bytes written or being written

    async def submit(self, chunks: list[bytes]) -> None:
        await self.drain()
        self.queued += sum(len(c) for c in chunks)
        pool = self._background() if self._background and self._fetch.readers == 0 else None
        self._pending = asyncio.get_running_loop().run_in_executor(
            pool, self._fetch.temp.write_many_sync, chunks)

    async def drain(self) -> None:
        fut, self._pending = self._pending, None
        if fut is not None:
            try:
                self._fetch.progress(await fut)
            except BaseException:
                self._pending = fut  # close() still waits for the thread
                raise
            self._start_sync()

    def _start_sync(self) -> None:
        temp = self._fetch.temp
        if temp.written - self._synced < SYNC_EVERY or (self._sync and not self._sync.done()):
            return
        self._synced = temp.written
        self._sync = asyncio.get_running_loop().run_in_executor(None, _datasync, temp.fd)

    async def close(self) -> None:
        """Wait for the write (and sync) in flight even when cancelled: the caller closes the
        file next, and a thread using a closed (maybe reused) descriptor could hit another
        file."""
        fut, self._pending = self._pending, None
        cancelled = await _wait_uncancelled(fut)
        if fut is not None and not fut.cancelled() and fut.exception() is None:
            self._fetch.progress(fut.result())
        sync, self._sync = self._sync, None
        cancelled = await _wait_uncancelled(sync) or cancelled
        if cancelled:
            raise asyncio.CancelledError


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
