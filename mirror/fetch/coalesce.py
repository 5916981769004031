"""Single-flight: one upstream fetch per key, however many clients ask at once.

`SingleFlight` coalesces coroutines that return a value (manifests, tag revalidation).
`BlobFetch` is the streaming kind: one task downloads into a hashed temp file; every waiter tails
that file at its own pace with its own file descriptor, so a slow client never slows the
download or the other clients, and memory per client is one read chunk.

The last byte of any response is held back until the whole blob has verified: a client can see a
truncated body (and its connection closed) but never a complete body with a wrong digest."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from mirror.store.temp import TempBlob

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
        self.notify()

    def finish(self) -> None:
        self.done = True
        self.started.set()
        self.notify()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
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

    async def windows(self, start: int, end: int) -> AsyncIterator[tuple[int, int]]:
        """(offset, count) windows of [start, end] as their bytes land in the temp file.
        Raises the fetch's error if it fails. Byte `end` is held back until the digest is
        verified, so no response can complete with unverified content."""
        pos = start
        while pos <= end:
            if self.error is not None:
                raise self.error
            limit = end + 1 if self.done else min(self.available, end)
            if pos < limit:
                yield pos, limit - pos
                pos = limit
                continue
            await self.changed()

    def close_reader(self, fd: int) -> None:
        os.close(fd)
        self.readers -= 1
