"""Keeping the hot tier within its budget, beside the request path, never on it.

A commit only signals (DiskTier.request_eviction); this task wakes, picks least recently used
content that nobody is reading or writing, and deletes it until usage is at the low watermark.
Victims go strictly in LRU order; one whose copy to the cold tier is still pending waits for a
guard task that finishes that upload first (bounded in time) and then asks for another round,
so evicted content can come back from the cold tier. A slow or stopped object store therefore
delays eviction, never a client: usage may run past the budget while the store is stalled,
and comes back within it once the store answers again (or once a guard's time runs out: then
the content is evicted all the same, and the next request for it goes upstream)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mirror.observe.metrics import Metrics
from mirror.oci.models import Digest
from mirror.store.disk import DiskTier

log = logging.getLogger("mirror.store.eviction")
INTERVAL = 5.0  # also wakes this often unasked: usage learned from other workers, missed signals
GUARD_TIMEOUT = 60.0  # longest wait for the pending uploads of one round of victims
# Guards running at once: each finishes an upload now, past the uploader's own concurrency, so
# a large excess over a lagging object store must not start thousands of uploads.
MAX_GUARDS = 8

# (digest, seconds) -> True when the digest has no pending cold-tier copy any more.
Guard = Callable[[str, float], Awaitable[bool]]
Pending = Callable[[str], bool]  # whether a cold-tier copy of the digest is still pending


class Evictor:
    def __init__(self, tier: DiskTier, metrics: Metrics, *, guard: Guard | None = None,
                 pending: Pending | None = None,
                 guard_timeout: float = GUARD_TIMEOUT, interval: float = INTERVAL,
                 before_round: Callable[[], object] | None = None) -> None:
        self.tier = tier
        self.metrics = metrics
        self.guard = guard
        self.pending = pending
        self.guard_timeout = guard_timeout
        self.interval = interval
        self.before_round = before_round  # e.g. catch up with what other workers stored
        self._lock = asyncio.Lock()
        self._guards: dict[str, asyncio.Task[None]] = {}  # victims whose upload is finishing
        # Victims whose guard timed out, by the last use the guard saw: evicted anyway, unless
        # used or stored again since (then a new copy is pending and guarded again).
        self._given_up: dict[str, float] = {}
        # The last round stopped above its goal (victims were guarded): the next signal goes
        # on to the low watermark even though usage is back under the high one.
        self._unfinished = False

    async def run(self) -> None:
        """The background task: one round per signal from the tier, or per interval."""
        while True:
            try:
                await asyncio.wait_for(self.tier.eviction_requested.wait(), self.interval)
            except TimeoutError:
                pass
            forced = self.tier.take_eviction_request()
            try:  # nothing may end this task: a dead evictor fills the disk
                if self.before_round is not None:
                    self.before_round()
                if self.tier.evicting and (forced or self._unfinished or self.tier.over_budget()):
                    await self.evict()
            except Exception:
                log.exception("eviction failed")

    async def evict(self, target: int | None = None, wait: bool = False) -> tuple[int, int]:
        """Delete least recently used, unpinned content until usage <= target (default: the low
        watermark). Victims whose cold copy is pending are guarded in the background and taken
        in a later round; `wait` (the gc command) waits for those guards and goes on.
        Returns (objects, bytes) removed."""
        goal = self.tier.low if target is None else target
        async with self._lock:
            removed, freed = await self._round(goal)
            if wait and self._guards:
                await asyncio.gather(*self._guards.values(), return_exceptions=True)
                more, more_bytes = await self._round(goal)
                removed, freed = removed + more, freed + more_bytes
            self._unfinished = self.tier.used > goal
        if removed:
            self.metrics.evictions.labels(self.tier.name).inc(removed)
            self.metrics.evicted_bytes.labels(self.tier.name).inc(freed)
            log.info("evicted %d objects, %d bytes; hot tier now %d of %d bytes",
                     removed, freed, self.tier.used, self.tier.max_size)
        return removed, freed

    async def close(self) -> None:
        for task in self._guards.values():
            task.cancel()
        await asyncio.gather(*self._guards.values(), return_exceptions=True)

    def _waits_for_upload(self, key: str, last_access: float) -> bool:
        if self.pending is None or self._given_up.get(key) == last_access:
            return False
        return self.pending(key)

    async def _round(self, goal: int) -> tuple[int, int]:
        """Victims are the least recently used content that covers the excess, strictly in that
        order (a newer object is never taken for an older one whose copy is pending): those
        already in the cold tier go now, the others once their guard has finished the copy."""
        removed = freed = 0
        excess = self.tier.used - goal
        for key, size, last_access in self.tier.lru():
            if excess <= 0:
                break
            excess -= size
            if self._waits_for_upload(key, last_access):
                if (self.guard is not None and key not in self._guards
                        and len(self._guards) < MAX_GUARDS):
                    self._guards[key] = asyncio.create_task(self._guard(key, last_access),
                                                            name=f"evict-guard {key[:19]}")
                continue
            # None: read, rewritten or removed since lru() listed it.
            nbytes = await self.tier.evict_one(key, last_access)
            if nbytes is not None:
                removed += 1
                freed += nbytes
                self._given_up.pop(key, None)
        # Forget given-up victims that left the tier some other way (bounded by the tier).
        self._given_up = {k: v for k, v in self._given_up.items()
                          if (e := self.tier.entry(Digest.parse(k))) is not None
                          and e.last_access == v}
        return removed, freed

    async def _guard(self, key: str, last_access: float) -> None:
        """Finish the victim's upload (bounded), then ask for another round to take it."""
        assert self.guard is not None
        try:
            if not await self.guard(key, self.guard_timeout):
                log.warning("evicting %s from the hot tier before its copy to the cold tier "
                            "finished: the next request for it goes upstream", key)
                self._given_up[key] = last_access
        except Exception:
            log.exception("finishing the cold copy of %s failed", key)
            self._given_up[key] = last_access
        finally:
            self._guards.pop(key, None)
        self.tier.request_eviction()
