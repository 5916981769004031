"""What a process's downloads hold in memory, together: the bytes read but not yet hashed and
written (AheadBudget), and the size of each socket read of a blob body (BodyReads)."""

from __future__ import annotations

import asyncio
import weakref

import aiohttp

# Bytes a download's write or hash may fall behind its reads (held in memory meanwhile).
MAX_AHEAD = 4 * 1024 * 1024
# Bytes all of a process's downloads may hold so, together (AheadBudget): prefetches on the
# two low-priority threads fall behind their reads as a rule, and each held its MAX_AHEAD.
AHEAD_BUDGET = 2 * MAX_AHEAD
# Bytes asked of the socket per read of a blob body, shared by the bodies being read at once
# (AheadBudget.read_size). asyncio reads 256 KiB at a time; each read costs a bytes object,
# the HTTP parser's copy of it and a wakeup, which at several hundred MB/s weigh more than the
# bytes (1 MiB: +13% cold throughput). Several downloads share the link and the CPUs, so
# each gets less per read anyway, while every 1 MiB read buffer was held in full: five
# layers at once peaked 8-10 MiB higher than with 256 KiB reads (bench/README.md).
READ_SIZE = 1024 * 1024
MIN_READ = 256 * 1024  # asyncio's own per-read size


class AheadBudget:
    """The bytes a process's downloads hold between their reads and their lanes. Over the
    limit, a download reads on only once its own batches are done: each keeps going, one
    batch at a time, and memory stays near the limit however many downloads run."""

    def __init__(self, limit: int = AHEAD_BUDGET) -> None:
        self.limit = limit
        self.used = 0
        self.reading = 0  # blob bodies being read from upstreams (BodyReads)
        # transport -> (its own read size, the BodyReads that set it last)
        self.read_owners: weakref.WeakKeyDictionary[
            asyncio.BaseTransport, tuple[int, BodyReads]] = weakref.WeakKeyDictionary()
        self._waiters: list[asyncio.Future[None]] = []

    def read_size(self) -> int:
        """Bytes per recv for each body being read: READ_SIZE shared, at least MIN_READ."""
        return max(MIN_READ, READ_SIZE // max(1, self.reading))

    def change(self, delta: int) -> None:
        self.used += delta
        if delta < 0:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def changed(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut


class BodyReads:
    """The socket reads of one blob body: READ_SIZE bytes per recv, shared with the other
    bodies being read (see READ_SIZE), set again after each batch as downloads come and go;
    `close` puts back the transport's own size, so the pooled connection's later replies
    (manifests, tokens) read as aiohttp chose. `max_size` is the selector transport's
    per-read limit; other transports (TLS, other loops) keep their own.

    aiohttp pools the connection as soon as the body's last bytes are parsed, while this body's
    loop may still be handing its chunks on: the next body on that connection can begin before
    this one closes. So the budget remembers each transport's own size and which body set it
    last; only that one changes it or puts it back."""

    def __init__(self, resp: aiohttp.ClientResponse, budget: AheadBudget) -> None:
        self._budget = budget
        self._open = True
        transport = resp.connection.transport if resp.connection is not None else None
        self._transport = transport if isinstance(
            getattr(transport, "max_size", None), int) else None
        if self._transport is not None:
            owner = budget.read_owners.get(self._transport)
            own_size = owner[0] if owner is not None else self._transport.max_size  # type: ignore[attr-defined]
            budget.read_owners[self._transport] = (own_size, self)
        budget.reading += 1
        self.adjust()

    def _own_size(self) -> int | None:
        """The transport's own read size while this body is the one that set it."""
        owner = self._budget.read_owners.get(self._transport) if self._transport else None
        return owner[0] if owner is not None and owner[1] is self else None

    def adjust(self) -> None:
        own, transport = self._own_size(), self._transport
        if own is not None and transport is not None:
            transport.max_size = max(own, self._budget.read_size())  # type: ignore[attr-defined]

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._budget.reading -= 1
        own, transport = self._own_size(), self._transport
        if own is not None and transport is not None:
            transport.max_size = own  # type: ignore[attr-defined]
            del self._budget.read_owners[transport]
