"""Warm rules (`warm:` in the config): the server seeds the listed images at start and again
every `interval`, so they are cached before anyone asks and stay fresh.

It costs the upstream almost nothing when nothing changed: a tag older than cache.tag_ttl is
revalidated with one HEAD (Docker Hub counts manifest GETs, not HEADs, against the pull limit),
and the manifests and blobs it names are already cached by digest, so no GET follows. Only a tag
that moved costs a manifest GET and the new blobs."""

from __future__ import annotations

import asyncio
import logging
import time

from mirror.airgap.seed import ImageResult, Seeder, SeedOptions, SeedSummary, ServiceSource
from mirror.config import Config
from mirror.oci.imageref import ImageRef, parse_image_ref
from mirror.oci.models import Platform
from mirror.pull.service import PullService

log = logging.getLogger("mirror.airgap.warm")
WARM_PARALLEL = 2  # blobs at once: warming must not crowd out clients' fetches


class LogReporter:
    """Seed progress as log lines: one per image that failed or fetched something."""

    def total(self, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def image_done(self, result: ImageResult) -> None:
        if result.error:
            log.warning("warm: %s failed: %s", result.ref, result.error)
        elif result.blobs_fetched:
            log.info("warm: %s is %s: fetched %d blobs, %d bytes", result.ref, result.digest,
                     result.blobs_fetched, result.bytes_fetched)

    def problem(self, message: str) -> None:
        log.warning("warm: %s", message)


def warm_refs(config: Config) -> list[ImageRef]:
    aliases = config.alias_table()
    return [parse_image_ref(t, aliases, config.default_upstream) for t in config.warm.images]


async def warm_once(service: PullService, config: Config) -> SeedSummary:
    options = SeedOptions(tuple(Platform.parse(p) for p in config.warm.platforms),
                          config.warm.with_referrers, WARM_PARALLEL)
    return await Seeder(ServiceSource(service), options, LogReporter()).run(warm_refs(config))


async def warm_loop(service: PullService, config: Config) -> None:
    while True:
        t0 = time.monotonic()
        try:
            summary = await warm_once(service, config)
            log.info("warm: %d images, %d failed, %d blobs fetched (%d bytes) in %.1fs; next in "
                     "%.0fs", len(summary.results), summary.failed, summary.blobs_fetched,
                     summary.bytes_fetched, time.monotonic() - t0, config.warm.interval)
        except Exception:  # a bug in one round must not end warming for the process's life
            log.exception("warm round failed")
        await asyncio.sleep(config.warm.interval)


def start_warming(service: PullService, config: Config) -> asyncio.Task[None] | None:
    """The background task for the config's warm rules, or None when there are none."""
    if not config.warm.images:
        return None
    if config.offline:
        log.warning("warm: %d images listed, but offline: true; not warming",
                    len(config.warm.images))
        return None
    return asyncio.create_task(warm_loop(service, config), name="warm")
