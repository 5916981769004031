"""`mirror gc`: enforce the hot tier's budget now and, with cache.object_store.max_age, delete
cold objects no node used for that long. The server runs the same job periodically.

Run it while `mirror serve` on the same cache.dir is stopped: a running server keeps its hot
tier accounting in memory and would not see files deleted behind its back."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from mirror.config import Config
from mirror.observe.metrics import Metrics


async def run_gc(config: Config, upload_wait: float = 300.0) -> dict[str, int]:
    """One pass; returns figures for the report. Never contacts an upstream."""
    from mirror.pull.stack import build_services

    parts = await build_services(dataclasses.replace(config, offline=True), Metrics())
    try:
        tier = parts.tier
        # Pending uploads first: the evictor then finds nothing left to wait for.
        cold = await parts.tiers.gc(upload_wait) if parts.tiers is not None else None
        evicted, freed = (await parts.evictor.evict()) if tier.over_budget() else (0, 0)
        report = {"hot_evicted": evicted, "hot_freed": freed, "hot_used": tier.used,
                  "hot_max": tier.max_size}
        if cold is not None:
            report.update({"uploads_left": cold.uploads_left, "cold_removed": cold.cold_removed,
                           "cold_freed": cold.cold_freed, "cold_objects": cold.cold_objects,
                           "cold_bytes": cold.cold_bytes})
        return report
    finally:
        await parts.close()


def cmd_gc(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    from mirror.observe.log import setup_logging
    from mirror.store.dirlock import CacheDirBusy, CacheDirLock

    config = load(args.config)
    setup_logging(config.log.level, config.log.format)
    try:  # eviction and the tmp/ sweep must not run under a live server
        dirlock = CacheDirLock.exclusive(config.cache.dir, "mirror gc")
    except CacheDirBusy as e:
        print(f"mirror: {e}", file=sys.stderr)
        return 1
    with dirlock:
        r = asyncio.run(run_gc(config, args.upload_wait))
    print(f"hot tier {config.cache.dir}: evicted {r['hot_evicted']} objects "
          f"({r['hot_freed']} bytes); now {r['hot_used']} of {r['hot_max']} bytes")
    if "cold_objects" in r:
        print(f"cold tier: removed {r['cold_removed']} objects ({r['cold_freed']} bytes) unused "
              f"for cache.object_store.max_age; now {r['cold_objects']} objects, "
              f"{r['cold_bytes']} bytes; {r['uploads_left']} uploads still pending")
        if r["uploads_left"]:
            print("mirror gc: some uploads to the cold tier did not finish; they resume when "
                  "the server starts", file=sys.stderr)
    return 0


def add_gc_command(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None],
                   load: Callable[[str | None], Config]) -> None:
    g = sub.add_parser(
        "gc", help="enforce the cache budget now; expire unused cold-tier objects",
        description="Evict least recently used content until the hot tier (cache.dir) is within "
                    "cache.max_size (low watermark), after copying anything not yet in the cold "
                    "tier there; with cache.object_store.max_age, delete cold objects that no "
                    "node used for that long. Run it while the server on this cache.dir is "
                    "stopped; a running server does the same on its own.")
    config_arg(g)
    g.add_argument("--upload-wait", type=float, default=300.0, metavar="SECONDS",
                   help="how long to wait for pending cold-tier uploads first (default 300)")
    g.set_defaults(func=lambda a: cmd_gc(a, load))
