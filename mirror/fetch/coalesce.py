"""Single-flight: one upstream fetch per key, however many clients ask at once.

`SingleFlight` coalesces coroutines that return a value (manifests, tag revalidation).
`BlobFetch` is the streaming kind: one task downloads into a hashed temp file. Waiters that keep
up are sent the newest bytes from memory (the chunks as they came off the socket, kept a few
MiB back: `recent`); a waiter further behind reads the temp file with its own descriptor, so a
slow client never slows the download or the other clients.

The last byte of any response is held back until the whole blob has verified: a client can see a
truncated body (and its connection closed) but never a complete body with a wrong digest."""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from mirror.store.temp import Chunk, TempBlob

# Bytes of the newest chunks kept in memory, beyond those not yet in the file, for readers a
# little behind: the file is read only by readers further back (from the disk, since large
# blobs are written O_DIRECT).
KEEP_RECENT = 1024 * 1024
K = TypeVar("K")
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._inflight

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: K, fn: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """Returns (value, joined): joined is True when another caller's call was reused."""
        fut = self._inflight.get(key)
        joined = fut is not None
        if fut is None:
            # Registered before the first await, so a concurrent caller always finds it.
            fut = asyncio.ensure_future(fn())
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._done(key, f))
        # shield: one cancelled caller (client went away) must not cancel the call for all.
        return await asyncio.shield(fut), joined

    def _done(self, key: K, fut: asyncio.Future[V]) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if not fut.cancelled():
            fut.exception()  # retrieved: nobody may be left to await it


class BlobFetch:
    """State of one blob download that readers can tail."""

    def __init__(self, key: str, temp: TempBlob) -> None:
        self.key = key
        self.temp = temp
        self.size: int | None = None  # known once upstream sent its headers
        self.available = 0  # bytes written to the temp file so far
        self.received = 0  # bytes taken from the source so far (in the file or not yet)
        # The newest chunks, (offset, bytes), oldest first: every byte from the first kept
        # one up to `received`. A chunk goes only once it is in the file and KEEP_RECENT
        # newer bytes are kept, so whatever is not here is in the file.
        self.recent: collections.deque[tuple[int, Chunk]] = collections.deque()
        self.done = False  # verified and committed
        self.error: BaseException | None = None
        self.readers = 0
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.started = asyncio.Event()  # size known, or failed
        # Told the size when the upstream answers (a shared download tells other workers).
        self.on_started: Callable[[int | None], None] | None = None

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def set_size(self, size: int | None) -> None:
        self.size = size
        if self.on_started is not None:
            self.on_started(size)
        self.started.set()

    def progress(self, nbytes: int) -> None:
        self.available += nbytes
        self.received = max(self.received, self.available)
        self._trim()
        self.notify()

    def offer(self, chunks: Sequence[Chunk]) -> bool:
        """Bytes just taken from the source, before they are in the file: readers that keep
        up are sent them from here. With no reader (a prefetch) none are kept: one that
        joins reads the file up to what is written, then the chunks that come after.
        True when the chunks are kept: their buffers must not be reused then."""
        kept = bool(self.readers)
        if not kept:
            self.recent.clear()  # kept chunks must run up to `received`, with no gap
            self.received += sum(len(c) for c in chunks)
        else:
            for c in chunks:
                self.recent.append((self.received, c))
                self.received += len(c)
        self._trim()
        self.notify()
        return kept

    def _trim(self) -> None:
        recent = self.recent
        while recent:
            offset, chunk = recent[0]
            end = offset + len(chunk)
            if end > self.available or self.received - end < KEEP_RECENT:
                break
            recent.popleft()

    def piece(self, pos: int, limit: int) -> bytes | memoryview | tuple[int, int] | None:
        """What a reader at `pos` can be sent now, short of `limit`: bytes from memory, an
        (offset, count) range of the temp file, or None (wait for more)."""
        recent = self.recent
        first = recent[0][0] if recent else self.received
        if pos >= first:
            if pos >= min(limit, self.received):
                return None
            for offset, chunk in recent:  # a few MiB of 1 MiB-ish chunks: a short walk
                if pos < offset + len(chunk):
                    start = pos - offset
                    stop = min(len(chunk), limit - offset)
                    if isinstance(chunk, bytes) and not start and stop == len(chunk):
                        return chunk
                    return memoryview(chunk)[start:stop]
            return None
        stop = min(limit, self.available, first)
        return (pos, stop - pos) if pos < stop else None

    def finish(self) -> None:
        self.done = True
        self.received = max(self.received, self.available)
        # Every byte is in the file now: readers still going take file ranges. Kept, the
        # chunks lived as long as the fetch, which a reference cycle (its task) can keep
        # until the next full garbage collection: peak RSS grew by ~1 MiB per cold blob.
        self.recent.clear()
        self.started.set()
        self.notify()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.recent.clear()  # no reader is sent more (pieces raises `error`)
        self.started.set()
        self.notify()

    async def wait_started(self) -> None:
        await self.started.wait()
        if self.error is not None and not self.done:
            raise self.error

    async def changed(self) -> None:
        await self._changed.wait()

    def open_reader(self) -> int:
        """A private descriptor on the temp file. Taken synchronously while the fetch still
        holds the file open, so a later rename or unlink cannot take the bytes away. Opened
        through /proc rather than dup(): a dup shares the file position with the writer."""
        fd = os.open(f"/proc/self/fd/{self.temp.fd}", os.O_RDONLY)
        self.readers += 1
        return fd

    async def pieces(self, start: int, end: int
                     ) -> AsyncIterator[bytes | memoryview | tuple[int, int]]:
        """Bytes [start, end] as they arrive: from memory, or (offset, count) ranges of the
        temp file for a reader that fell behind. Raises the fetch's error if it fails. Byte
        `end` is held back until the digest is verified, so no response can complete with
        unverified content."""
        pos = start
        while pos <= end:
            if self.error is not None:
                raise self.error
            piece = self.piece(pos, end + 1 if self.done else end)
            if piece is None:
                await self.changed()
                continue
            yield piece
            pos += piece[1] if isinstance(piece, tuple) else len(piece)

    def close_reader(self, fd: int) -> None:
        os.close(fd)
        self.readers -= 1
