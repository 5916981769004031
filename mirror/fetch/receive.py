"""A big blob body read straight off the socket into page-aligned buffers, past aiohttp's
reader once the headers are in (BodyReceiver.take).

aiohttp's client hands a body on as one bytes object per socket read, copied again by its HTTP
parser, which then the O_DIRECT writer copies into its aligned buffer: three copies and several
Python objects per read. Measured on this project's machine (bench/README.md, issue 17): a
probe that received into aligned buffers instead ran 914 MB/s at 1.14 CPU-s per GB where the
same probe on aiohttp's receive path ran 716 at 1.49. Here the socket fills 2 MiB buffers
(recv_into, one copy), which are hashed and written O_DIRECT from that memory and come back
for reuse once both lanes are done with them. Readers are sent the same memory: a buffer they
keep is lent, and refilled only once nothing refers to it any more (`_reclaim`).

Only plain Content-Length bodies are taken (no chunked transfer, no content encoding), and only
big ones: a small body is read as before and its connection goes back to the pool. A taken
connection is closed at the end, never pooled: a big blob costs one new connection at most."""

from __future__ import annotations

import asyncio
import collections
import mmap
import sys
from collections.abc import AsyncIterator, Callable
from typing import TypeAlias

import aiohttp

from mirror.fetch.budget import AheadBudget
from mirror.store.temp import DIRECT_BUFFER, Chunk

BUFFER = DIRECT_BUFFER  # one buffer is one O_DIRECT write: no staging copy
# Per body: one filling, one with the lanes (2 MiB take them 1.5 ms, less than the socket takes
# to fill the next). A third bought no speed and cost 2 MiB per download at once (five cold
# layers: peak RSS 70 -> 77 MiB, bench/README.md). Past the first, a buffer is made only while
# the process's downloads hold less than their AheadBudget.
BUFFERS = 2
LENT = 2  # buffers given away to readers that are kept for reuse, per body
TAKE_MIN = 4 * BUFFER  # shorter bodies stay with aiohttp (and their connection is reused)

# Gives a buffer back: reuse=False when something may still hold it (BlobFetch.recent).
Release: TypeAlias = Callable[[bool], None]


class BodyReceiver(asyncio.BufferedProtocol):
    """The rest of one response body, received into at most BUFFERS buffers of BUFFER bytes.

    `chunks()` yields each full buffer (the mmap itself: page-aligned, BUFFER long) or the
    last, partial one (a memoryview), with the call that gives the buffer back; reading
    pauses while no buffer is free. The consumer must give back every buffer it is handed,
    or reading stops for good. `timeout` is the longest wait for bytes while reading, as
    aiohttp's sock_read would have been."""

    def __init__(self, transport: asyncio.Transport, remaining: int, head: bytes,
                 timeout: float | None, origin: asyncio.BaseProtocol | None = None,
                 budget: AheadBudget | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._budget = budget
        self._origin = origin  # aiohttp's protocol: told when the connection is lost
        self._remaining = remaining  # bytes of the body not yet received
        self._timeout = timeout
        self._free: list[mmap.mmap] = []
        # Buffers given away to readers (BlobFetch.recent, queued client writes): taken back
        # once nothing else refers to them, dropped past LENT.
        self._lent: collections.deque[mmap.mmap] = collections.deque()
        self._allocated = 0
        self._cur: mmap.mmap | None = None
        self._pos = 0
        self._ready: collections.deque[tuple[Chunk, Release | None]] = collections.deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._closed = False
        self._scratch: bytearray | None = None
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._cur = self._buffer()
        if len(head) <= BUFFER:  # into the first buffer: the buffers stay block-aligned
            self._cur[:len(head)] = head  # type: ignore[index]
            self._pos = len(head)
            if self._pos == BUFFER or not remaining:
                self._hand_on()
        else:
            self._ready.append((head, None))
        if timeout:
            self._timer = self._loop.call_later(timeout / 4, self._check_stall)

    @classmethod
    def take(cls, resp: aiohttp.ClientResponse, budget: AheadBudget | None = None,
             stall: float | None = None) -> BodyReceiver | None:
        """Take `resp`'s connection for the rest of its body, or None to leave it to aiohttp
        (small, chunked or encoded bodies, already finished, or a transport we cannot take).
        A body that sends nothing for `stall` seconds (by default the session's sock_read)
        fails with TimeoutError."""
        conn = resp.connection
        length = resp.content_length
        content = resp.content
        if (conn is None or length is None or length < TAKE_MIN or content.is_eof()
                or content.exception() is not None
                or resp.headers.get("Content-Encoding", "identity").lower() != "identity"
                or "chunked" in resp.headers.get("Transfer-Encoding", "").lower()):
            return None
        transport, proto = conn.transport, conn.protocol
        if (not isinstance(transport, asyncio.Transport) or transport.is_closing()
                or proto is None):
            return None
        remaining = length - content.total_bytes  # total_bytes: what its parser was fed
        if remaining <= 0:  # cannot be while not at EOF; leave the rest to aiohttp
            return None
        # What aiohttp has parsed so far (the reads that came with the headers); nothing
        # more reaches its parser once the transport feeds us.
        head = content.read_nowait()
        timeout = stall if stall is not None else getattr(proto, "read_timeout", None)
        drop = getattr(proto, "_drop_timeout", None)
        if callable(drop):  # its sock_read timer would fire on a body it no longer sees
            drop()
        receiver = cls(transport, remaining, head, timeout, proto, budget)
        transport.set_protocol(receiver)
        transport.resume_reading()  # aiohttp may have paused it with its buffer full
        return receiver

    # -- the consumer's side ------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[tuple[Chunk, Release | None]]:
        while True:
            if self._ready:
                yield self._ready.popleft()
                continue
            if self._error is not None:
                raise self._error
            if self._remaining == 0:
                return
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Close the connection (it is never pooled) and drop the buffers: those still with
        the lanes are freed when they are done with them."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._ready.clear()
        self._free.clear()
        self._lent.clear()
        self._cur = None
        self._transport.close()

    def _release(self, buf: mmap.mmap, reuse: bool) -> None:
        if self._closed:
            return
        if not reuse:  # given away: a new one takes its place
            self._allocated -= 1
            self._lent.append(buf)
            if len(self._lent) > LENT:
                self._lent.popleft()  # freed when its last holder lets go
            if self._cur is not None:
                return
            new = self._buffer()
            if new is None:
                return
            buf = new
        if self._cur is None:
            self._cur, self._pos = buf, 0
            if self._paused and self._remaining:
                self._paused = False
                self._last = self._loop.time()
                self._transport.resume_reading()
        else:
            self._free.append(buf)

    def _buffer(self) -> mmap.mmap | None:
        if self._free:
            return self._free.pop()
        budget = self._budget
        if self._allocated < BUFFERS and (not self._allocated or budget is None
                                          or budget.used < budget.limit):
            self._allocated += 1
            return self._reclaim() or _new_buffer()
        return None

    def _reclaim(self) -> mmap.mmap | None:
        """A lent buffer nothing refers to any more. Every view of an mmap (a slice in a
        transport's queue too) holds a reference to it, so a count of ours alone (the deque's,
        the loop variable's and getrefcount's own) means no one can read it again."""
        for buf in self._lent:
            if sys.getrefcount(buf) <= 3:
                self._lent.remove(buf)
                return buf
        return None

    # -- the transport's side -----------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self._remaining:  # past the body's end (a broken upstream): read, not kept
            if self._scratch is None:
                self._scratch = bytearray(64 * 1024)
            return memoryview(self._scratch)
        if self._cur is None:  # bytes read before the pause took effect: never dropped
            self._cur, self._pos = _new_buffer(), 0
            self._allocated += 1
        end = min(BUFFER, self._pos + self._remaining)
        return memoryview(self._cur)[self._pos:end]

    def buffer_updated(self, nbytes: int) -> None:
        if not self._remaining:
            return  # past the body's end: the connection is closed when the body is done
        self._pos += nbytes
        self._remaining -= nbytes
        self._last = self._loop.time()
        if self._pos == BUFFER or not self._remaining:
            self._hand_on()

    def _hand_on(self) -> None:
        buf, n = self._cur, self._pos
        assert buf is not None
        chunk: Chunk = buf if n == BUFFER else memoryview(buf)[:n]
        self._ready.append((chunk, lambda reuse: self._release(buf, reuse)))
        self._cur, self._pos = self._buffer(), 0
        if self._cur is None and self._remaining and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost tells whether the body was whole

    def connection_lost(self, exc: Exception | None) -> None:
        if self._remaining and self._error is None:
            error = aiohttp.ClientPayloadError(
                f"the body ended {self._remaining} bytes early")
            error.__cause__ = exc
            self._error = error
        if self._timer is not None:
            self._timer.cancel()
        self._wake()
        if self._origin is not None:
            # aiohttp's connector waits for its protocol to hear of the loss when the
            # session closes (ResponseHandler.closed); its reader, which nobody reads now,
            # gets the error.
            origin, self._origin = self._origin, None
            origin.connection_lost(exc)

    def _check_stall(self) -> None:
        assert self._timeout
        if self._closed or not self._remaining or self._error is not None:
            return
        if not self._paused and self._loop.time() - self._last > self._timeout:
            self._error = TimeoutError(f"no body bytes in {self._timeout} s")
            self._transport.close()
            self._wake()
            return
        self._timer = self._loop.call_later(self._timeout / 4, self._check_stall)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _new_buffer() -> mmap.mmap:
    """A page-aligned BUFFER: one huge page where the kernel aligns it so (Linux 6.7+ does for
    anonymous mappings of 2 MiB), one fault and one clear instead of 512."""
    buf = mmap.mmap(-1, BUFFER)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass  # no transparent huge pages here: 4 KiB pages, as any mapping
    return buf
