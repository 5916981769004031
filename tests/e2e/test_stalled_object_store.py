"""Nothing slow on a client's path: with the hot tier at its high watermark and the object
store stopped (SIGSTOP: it accepts connections and answers nothing), cold pulls take about as
long as with the store running (commits do not wait for eviction, eviction does not wait for
uploads on the request path, and cold-tier lookups give up after lookup_timeout and are then
skipped); once the store resumes, pending uploads finish and the hot tier is back within its
budget. Real mirror process, real registry, real SeaweedFS."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ImagePusher, PushedImage, big_layer
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.pulls import du, metric, pull, wait_metric
from tests.support.seaweed import SeaweedS3
from tests.support.waiting import wait_for

MiB = 1 << 20
BUDGET = 128 * MiB
# Per image, incompressible. Large enough that the one lookup timeout a stopped store costs
# (then the cold tier is skipped) is small beside the pulls: with 36 MiB images the 300 ms
# timeout alone was 20% of three fast pulls.
LAYERS_MB = (24, 28, 32)
IMAGES = 9  # 3 to fill the tier, 3 timed with the store up, 3 with it stopped


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[SeaweedS3]:
    """A SeaweedFS of this test's own: it is stopped and resumed."""
    with SeaweedS3(tmp_path / "weed") as s3:
        yield s3


@pytest.fixture(scope="module")
def images(registry: Any, image_cache_dir: Path) -> list[PushedImage]:
    pusher = ImagePusher(registry.url)
    return [pusher.push_image(f"stalled/img{i}", "1",
                              [big_layer(mb, image_cache_dir, seed=f"stalled{i}")
                               for mb in LAYERS_MB])
            for i in range(IMAGES)]


def timed_pulls(url: str, batch: list[PushedImage]) -> float:
    started = time.monotonic()
    for img in batch:
        pull(url, img.repo, "1")
    return time.monotonic() - started


@pytest.mark.slow
def test_cold_pulls_do_not_wait_for_a_stopped_object_store(
        images: list[PushedImage], registry: Any, own_seaweed: SeaweedS3,
        tmp_path: Path) -> None:
    bucket = f"stalled-{uuid.uuid4().hex[:8]}"
    own_seaweed.create_bucket(bucket)
    cache = tmp_path / "cache"
    config = mirror_config({"docker.io": registry.url}, cache, cache={
        "max_size": "128MiB",
        "object_store": own_seaweed.mirror_config(bucket, lookup_timeout="100ms")},
        prefetch={"enabled": False})
    node = MirrorProcess(config, tmp_path / "node", env=own_seaweed.env()).start(timeout=30)
    try:
        fill, up, down = images[:3], images[3:6], images[6:]
        timed_pulls(node.url, fill)  # the hot tier reaches its high watermark
        wait_metric(node.url, "mirror_cold_pending_uploads", 0.0, timeout=60)
        assert metric(node.url, "mirror_evictions_total", tier="hot") >= 1
        with_store = timed_pulls(node.url, up)
        wait_metric(node.url, "mirror_cold_pending_uploads", 0.0, timeout=60)

        assert own_seaweed.proc is not None
        os.kill(own_seaweed.proc.pid, signal.SIGSTOP)
        try:
            store_stopped = timed_pulls(node.url, down)
            pending = metric(node.url, "mirror_cold_pending_uploads")
        finally:
            os.kill(own_seaweed.proc.pid, signal.SIGCONT)
        print(f"3 cold pulls of {sum(LAYERS_MB)} MiB: {with_store:.2f}s with the object store, "
              f"{store_stopped:.2f}s with it stopped ({store_stopped / with_store:.2f}x); "
              f"{pending:.0f} uploads pending while stopped")
        assert pending > 0  # the store really was unreachable for the uploads
        assert metric(node.url, "mirror_cold_tier_skips_total") >= 1
        assert store_stopped <= 1.2 * with_store, (store_stopped, with_store)

        # Resumed: the pending uploads finish, then the evictor takes the tier back under
        # its budget (nothing was lost: what was evicted is in the bucket).
        wait_metric(node.url, "mirror_cold_pending_uploads", 0.0, timeout=120)
        wait_for("the hot tier back within its budget",
                 lambda: du(cache / "blobs") <= BUDGET, timeout=60)
        for img in down:  # evicted or not, every image still pulls, verified
            pull(node.url, img.repo, "1")
    finally:
        node.stop()
