"""HTTP responses for content: mapped verified files, tailing streams for downloads."""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import IO, Any

from aiohttp import web

from mirror.fetch.coalesce import BlobFetch

log = logging.getLogger("mirror.http.responses")
MAPPED_CHUNK = 1 << 20  # bytes of a mapped file per transport write
MAP_WINDOW = 2 << 20  # bytes of a file mapped at once (file pages mapped count into RSS)


class SendfileResponse(web.StreamResponse):
    """Bytes [offset, offset+count) of an open, verified, immutable file.

    The bytes go from the page cache to the socket without passing through Python objects:
    the file is memory-mapped and slices of the mapping are written to the transport (the
    kernel copies them into the socket once). Measured on this machine (bench/README.md), that
    serves a warm 512 MiB blob about twice as fast as sendfile(2) did, for half the CPU: Linux
    feeds sendfile through a 64 KiB internal pipe. It also works on TLS transports, where
    sendfile cannot. sendfile remains the fallback for files that cannot be mapped."""

    def __init__(self, fobj: IO[bytes], offset: int, count: int,
                 reads: Executor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fobj = fobj
        self._reads = reads  # threads for PageIn (None: the loop's default executor)
        self._offset = offset
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:  # aiohttp prepares a returned response again: already sent
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            if request.method == "HEAD" or self.content_length == 0:
                return writer
            if request.transport is None:
                raise ConnectionResetError("client went away")
            assert self.content_length is not None
            if not await self._write_mapped(request, self.content_length):
                if request.transport is not None:
                    request.transport.abort()  # a short body must look cut, never complete
                return writer
            await super().write_eof()
            return writer
        finally:
            self._fobj.close()

    async def _write_mapped(self, request: web.BaseRequest, count: int) -> bool:
        """False when the file is shorter than the response said (nothing sent then)."""
        fd = self._fobj.fileno()
        if os.fstat(fd).st_size < self._offset + count:
            return False
        await write_file_range(request, self, fd, self._offset, count, self._reads)
        return True


async def write_file_range(request: web.BaseRequest, resp: web.StreamResponse, fd: int,
                           offset: int, count: int, reads: Executor | None = None,
                           page_in: bool = True) -> None:
    """Write bytes [offset, offset+count) of a file that holds them to a prepared response.

    The file is mapped a window at a time (so the process never has more than a window of it
    resident) and slices of the mapping go to the transport; where mapping fails, sendfile,
    and where that is not supported either, reads in the executor. Raises ConnectionError
    when the bytes cannot all be sent.

    A mapped page that is not in memory is read from the disk inside send(), with the event
    loop (every other client of this process) waiting: 0.2-1.1 s at a time here, measured
    (bench/README.md). Such files are common: downloads are written O_DIRECT, past the page
    cache, and a hot tier larger than memory is read from the disk. So when a window is not
    in memory (`resident`), from there on a worker thread brings each window in (`PageIn`),
    one ahead of the one being sent, on `reads` (None: the loop's default executor). Three
    pages stand for a window: one evicted in part may still fault in a page or two.
    `page_in=False` maps every window as it is (see stream_fetch)."""
    pos, end = offset, offset + count
    loader: PageIn | None = None
    probing = page_in  # until a window was missing: from then on PageIn, or mapping as before
    try:
        while pos < end:
            start = pos - pos % mmap.ALLOCATIONGRANULARITY
            length = min(MAP_WINDOW, end - start)
            if probing and not resident(fd, pos, start + length):
                probing = False
                try:
                    loader = PageIn(fd, end, reads)
                except OSError as e:  # no descriptor left for /dev/null: mapped as before
                    log.warning("could not read a file in off the event loop: %s", e)
            if loader is not None:
                await loader.ready(pos, start + length)
            try:
                mapped = mmap.mmap(fd, length, prot=mmap.PROT_READ, offset=start)
            except (OSError, ValueError):  # a file system without mmap
                await _copy_range(request, resp, fd, pos, end - pos)
                return
            view = memoryview(mapped)
            try:
                while pos < start + length:
                    n = min(MAPPED_CHUNK, start + length - pos)
                    await resp.write(view[pos - start:pos - start + n])  # waits for the client
                    pos += n
            finally:
                view.release()
                try:
                    mapped.close()
                except BufferError:  # a slice still queued in the transport: closed when freed
                    pass
    finally:
        if loader is not None:
            await loader.close()


def resident(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of a file look to be in memory: one byte of the first,
    middle and last pages read with RWF_NOWAIT, which fails rather than wait for the disk
    (three syscalls per window: nothing beside sending 2 MiB). True where that cannot be asked
    (not Linux, a file system without it): the mapping is used as before."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return True
    probe = bytearray(1)
    for at in (start, (start + end) // 2, end - 1):
        try:
            os.preadv(fd, [probe], at, nowait)
        except BlockingIOError:
            return False
        except OSError:
            return True
    return True


class PageIn:
    """Brings windows of a file into the page cache on worker threads, the next one while the
    last is sent: sendfile(2) to /dev/null reads the pages in without copying them anywhere
    (a read into a buffer would add a copy, and on two cores cost half the speed)."""

    def __init__(self, fd: int, end: int, reads: Executor | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd, self._end, self._reads = fd, end, reads
        self._null = os.open(os.devnull, os.O_WRONLY)
        self._ahead: tuple[int, asyncio.Future[None]] | None = None  # the next window's load
        self._running: set[asyncio.Future[None]] = set()

    async def ready(self, start: int, stop: int) -> None:
        """Until bytes [start, stop) are in memory; the window after them is asked for (one:
        two or four ahead were slower and less even, bench/README.md)."""
        if self._ahead is not None and self._ahead[0] == start:
            current = self._ahead[1]
        else:
            current = self._load(start, stop - start)
        self._ahead = None
        if stop < self._end:
            self._ahead = (stop, self._load(stop, min(MAP_WINDOW, self._end - stop)))
        # Shielded: cancelling the sender must not cancel the future of a load that a thread
        # still runs (close() then would not wait for it, and the file is closed next).
        try:
            await asyncio.shield(current)
        except ConnectionError:
            raise
        except OSError as e:  # EIO and the like: the client's transfer is cut, never completed
            log.error("a blob file could not be read from the disk: %s", e)
            raise ConnectionAbortedError(f"the file could not be read: {e}") from e

    def _load(self, offset: int, count: int) -> asyncio.Future[None]:
        fut = self._loop.run_in_executor(self._reads, _page_in, self._null, self._fd, offset,
                                         count)
        self._running.add(fut)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: asyncio.Future[None]) -> None:
        self._running.discard(fut)
        if not fut.cancelled():
            fut.exception()  # retrieved: a load nobody waits for (the client left) is dropped

    async def close(self) -> None:
        """Wait for the loads still running, even when cancelled (they use the file, which the
        caller closes next), then close /dev/null."""
        cancelled = False
        while self._running:
            try:
                await asyncio.wait(set(self._running))
            except asyncio.CancelledError:
                cancelled = True
        os.close(self._null)
        if cancelled:
            raise asyncio.CancelledError


def _page_in(null: int, fd: int, offset: int, count: int) -> None:
    """Worker thread: bytes [offset, offset+count) of `fd` into the page cache."""
    try:
        while count > 0:
            sent = os.sendfile(null, fd, offset, count)
            if sent <= 0:
                return
            offset, count = offset + sent, count - sent
    except OSError:  # no sendfile from this file system: a read does it, with a copy
        while count > 0:
            got = len(os.pread(fd, min(count, MAP_WINDOW), offset))
            if not got:
                return
            offset, count = offset + got, count - got


async def _copy_range(request: web.BaseRequest, resp: web.StreamResponse, fd: int, offset: int,
                      count: int) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    with open(fd, "rb", closefd=False) as fobj:
        try:
            if await loop.sendfile(transport, fobj, offset, count) != count:
                raise ConnectionResetError("file shorter than expected")
            return
        except NotImplementedError:  # no sendfile on this transport: plain copies
            pass
    pos, end = offset, offset + count
    while pos < end:
        chunk = await loop.run_in_executor(None, os.pread, fd, min(1 << 20, end - pos), pos)
        if not chunk:
            raise ConnectionResetError("file shrank while sending")
        await resp.write(chunk)
        pos += len(chunk)


async def stream_fetch(request: web.Request, resp: web.StreamResponse, fetch: BlobFetch, fd: int,
                       start: int, end: int) -> int:
    """Send bytes [start, end] of a download in progress; returns bytes sent.

    A reader that keeps up is sent the bytes from memory as they come off the upstream's
    socket (no file read: the download writes them with O_DIRECT, past the page cache); one
    that fell behind reads the temp file (mapped, see write_file_range) until it catches up.
    If the download fails, the connection is cut: the client must see a broken transfer,
    never a clean end."""
    sent = 0
    try:
        await resp.prepare(request)
        async for piece in fetch.pieces(start, end):
            if isinstance(piece, tuple):
                offset, count = piece
                # Mapped as it is, not read in by PageIn: its pieces are small and many, and
                # in A/Bs of cold pulls (skopeo, a layer at a time) PageIn cost 0.1-0.2 CPU-s
                # per pull (bench/README.md). The loop may wait for the disk here.
                await write_file_range(request, resp, fd, offset, count, page_in=False)
            else:
                count = len(piece)
                await resp.write(piece)  # waits for the client
            sent += count
    except BaseException:
        if request.transport is not None:
            request.transport.abort()
        raise
    finally:
        fetch.close_reader(fd)
    await resp.write_eof()
    return sent


async def stream_body(request: web.Request, resp: web.StreamResponse, body: AsyncIterator[bytes],
                      start: int, end: int) -> int:
    """Send bytes [start, end] of a stream that verifies itself as it ends (end < 0: to the
    end). The last piece waits until the whole body was read, i.e. verified, even for a short
    range; a failure cuts the connection."""
    sent = pos = 0
    held = b""
    try:
        await resp.prepare(request)
        async for chunk in body:
            lo, hi = pos, pos + len(chunk)
            pos = hi
            piece = chunk[max(0, start - lo):(end + 1 - lo) if end >= 0 else None] if hi > start else b""
            if piece:
                if held:
                    await resp.write(held)
                    sent += len(held)
                held = piece
        if held:
            await resp.write(held)
            sent += len(held)
    except BaseException:
        if request.transport is not None:
            request.transport.abort()
        raise
    finally:
        await body.aclose()  # type: ignore[attr-defined]
    await resp.write_eof()
    return sent
