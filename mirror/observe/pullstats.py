"""In-memory, bounded history for people: per-minute samples of the counters (for "last
hour"), the most pulled images and the most recent errors. Prometheus keeps the long history;
this is what the status page and `mirror stats` can show without one.

Everything here is bounded by construction, whatever the traffic: 61 samples, `capacity`
tracked images, `keep` errors."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from itertools import pairwise

from mirror.observe.metrics import Totals

SAMPLE_INTERVAL = 60.0
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall-clock time of the sample
    totals: Totals


class MinuteSamples:
    """Cumulative totals sampled once a minute, the last hour of them kept. A window's numbers
    are the difference between now and the oldest sample inside it, so no sample is ever a
    sum that could drift from the counters."""

    def __init__(self, read: Callable[[], Totals], window: float = HOUR,
                 interval: float = SAMPLE_INTERVAL) -> None:
        self._read = read
        self.window = window
        self.interval = interval
        self._ring: deque[Sample] = deque(maxlen=int(window // interval) + 1)

    def sample(self, now: float | None = None) -> None:
        self._ring.append(Sample(time.time() if now is None else now, self._read()))

    def since(self, seconds: float, now: float | None = None) -> tuple[Totals, float]:
        """(what happened in the last `seconds`, how many seconds that really covers): less
        than asked when the mirror has not been up that long."""
        now = time.time() if now is None else now
        current = self._read()
        base = next((s for s in self._ring if s.at >= now - seconds), None)
        if base is None:
            return current - current, 0.0
        return current - base.totals, now - base.at

    def per_interval(self, now: float | None = None) -> list[tuple[float, Totals]]:
        """(start time, what happened) per sampling interval, oldest first, ending with the
        interval in progress."""
        now = time.time() if now is None else now
        points = [*self._ring, Sample(now, self._read())]
        return [(a.at, b.totals - a.totals) for a, b in pairwise(points)]


@dataclass(slots=True)
class ImageCount:
    name: str  # upstream/repository
    pulls: int = 0  # manifest requests answered
    bytes: int = 0  # content bytes served for this repository
    error: int = 0  # over-estimate bound of `pulls` (space-saving)
    last: float = 0.0


class TopImages:
    """The most pulled images in bounded memory: the space-saving algorithm (Metwally et al.
    2005). When full, a new name replaces the least-counted one and inherits its count as a
    possible over-estimate, so a truly popular image can never be pushed out by a stream of
    one-off names."""

    def __init__(self, capacity: int = 200) -> None:
        self.capacity = capacity
        self._items: dict[str, ImageCount] = {}

    def pulled(self, name: str, now: float) -> None:
        item = self._items.get(name)
        if item is None:
            if len(self._items) >= self.capacity:
                victim = min(self._items.values(), key=lambda i: (i.pulls, i.last))
                del self._items[victim.name]
                item = ImageCount(name, victim.pulls, 0, victim.pulls)
            else:
                item = ImageCount(name)
            self._items[name] = item
        item.pulls += 1
        item.last = now

    def served(self, name: str, nbytes: int) -> None:
        item = self._items.get(name)
        if item is not None:  # blobs alone never add a name: pulls decide who is tracked
            item.bytes += nbytes

    def top(self, n: int = 10) -> list[ImageCount]:
        return sorted(self._items.values(), key=lambda i: (-i.pulls, -i.bytes, i.name))[:n]

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class PullError:
    at: float
    method: str
    path: str
    status: int
    code: str
    message: str


class PullStats:
    """What the status page shows beyond the counters. Fed by the audit middleware."""

    def __init__(self, read: Callable[[], Totals], top_capacity: int = 200,
                 keep_errors: int = 50, interval: float = SAMPLE_INTERVAL) -> None:
        self.samples = MinuteSamples(read, interval=interval)
        self.images = TopImages(top_capacity)
        self.errors: deque[PullError] = deque(maxlen=keep_errors)

    def observe(self, *, image: str | None, kind: str, method: str, path: str, status: int,
                nbytes: int, code: str = "", message: str = "", now: float | None = None) -> None:
        now = time.time() if now is None else now
        if image is not None and status < 300:
            if kind == "manifest":
                self.images.pulled(image, now)
            if nbytes:
                self.images.served(image, nbytes)
        # 401 is the normal first step of every authenticated pull, not a problem to show.
        if (status >= 400 and status != 401) or (code and status < 400):
            self.errors.append(PullError(now, method, path[:300], status, code, message[:300]))

    async def ctx(self, app: object) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: one sample at start (the base of "last hour" until an hour has
        passed), then one per interval."""
        self.samples.sample()
        task = asyncio.create_task(self._sampler(), name="pull stats sampler")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(self.samples.interval)
            self.samples.sample()
