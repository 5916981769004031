"""The tiered cache end to end: real mirror processes, a real registry behind a recording tap,
and a real S3 server (SeaweedFS) on loopback as the shared cold tier.

- A 64 MiB hot tier comes back within its budget as soon as its copies to the cold tier are
  done while a few hundred MiB pass through it, and what it evicted comes back from the cold
  tier with no upstream request.
- Two nodes with their own empty hot tiers share one bucket: what node A pulled, node B serves
  without asking the upstream.
- A node whose hot tier was deleted while it was stopped rebuilds its accounting, answers a tag
  with the upstream gone (from the cold tier's tag records) and serves the blobs from there.
- `mirror gc` enforces the budget and expires cold objects unused for max_age.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import Catalog, ImagePusher, PushedImage, RecordingProxy, big_layer
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.pulls import UsageSampler, du, metric, pull, wait_metric
from tests.support.seaweed import SeaweedS3
from tests.support.waiting import wait_for

MiB = 1 << 20
BUDGET = 64 * MiB
LAYER_MB = ((48, 56, 64), (52, 60, 50))  # two images, ~330 MiB of incompressible layers


def node_config(upstream: str, cache_dir: Path, seaweed: SeaweedS3, bucket: str,
                **extra: Any) -> dict[str, Any]:
    os_extra = extra.pop("object_store", {})
    cache = {"object_store": seaweed.mirror_config(bucket, **os_extra), **extra.pop("cache", {})}
    return mirror_config({"docker.io": upstream}, cache_dir, cache=cache, **extra)


def start_node(nodes: list[MirrorProcess], config: dict[str, Any], workdir: Path,
               seaweed: SeaweedS3) -> MirrorProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    node = MirrorProcess(config, workdir, env=seaweed.env())
    nodes.append(node)
    return node.start(timeout=30)


def drained(node: MirrorProcess) -> None:
    """Wait until the node copied everything it holds to the cold tier."""
    wait_metric(node.url, "mirror_cold_pending_uploads", 0.0, timeout=120)


@pytest.fixture(scope="module")
def big_images(registry: Any, image_cache_dir: Path) -> list[PushedImage]:
    pusher = ImagePusher(registry.url)
    images = []
    for i, sizes in enumerate(LAYER_MB):
        layers = [big_layer(mb, image_cache_dir, seed=f"tiered{i}") for mb in sizes]
        images.append(pusher.push_image(f"tiered/img{i}", "1", layers))
    return images


@pytest.mark.slow
def test_hot_budget_holds_and_evicted_blobs_come_back_from_cold(
        big_images: list[PushedImage], make_tap: Callable[[str], RecordingProxy],
        registry: Any, seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess],
        tmp_path: Path) -> None:
    tap = make_tap(registry.url)
    cache = tmp_path / "cache"
    # One client pulling blobs one after another, no prefetch: one blob in flight at a time.
    node = start_node(nodes, node_config(tap.url, cache, seaweed, bucket,
                                         cache={"max_size": "64MiB"},
                                         prefetch={"enabled": False}), tmp_path / "n", seaweed)
    largest = max(b.size for img in big_images for b in img.blobs)
    total = sum(b.size for img in big_images for b in img.blobs)
    assert total > 5 * BUDGET

    # Eviction runs beside the pulls and never deletes what the cold tier lacks: while the
    # uploads lag behind the downloads the hot tier holds what is still to be copied on top
    # of its budget, and comes back within the budget once the copies are done.
    first = []
    for img in big_images:
        with UsageSampler(cache) as sampler:
            first.append(pull(node.url, img.repo, "1"))
        image_bytes = sum(b.size for b in img.blobs)
        print(f"hot tier peak: {sampler.max_committed} committed, {sampler.max_total} with the "
              f"download in progress; budget {BUDGET}, image {image_bytes}")
        assert sampler.samples > 20
        assert sampler.max_total <= BUDGET + image_bytes + largest, (sampler.max_total, BUDGET)
        drained(node)
        wait_for("the hot tier within its budget", lambda: du(cache / "blobs") <= BUDGET,
                 timeout=30)
    assert metric(node.url, "mirror_evictions_total", tier="hot") >= 4

    # The first image was evicted from the hot tier; pulled again, every byte comes from the
    # cold tier (verified on the way) and nothing is asked of the upstream.
    img0 = big_images[0]
    evicted = [b for b in img0.layers if not (cache / "blobs" / "sha256" / b.digest[7:9]
                                                / b.digest[7:]).exists()]
    assert len(evicted) >= 2
    tap.clear()
    cold_before = metric(node.url, "mirror_bytes_served_total", source="cold")
    with UsageSampler(cache) as sampler:
        again = pull(node.url, img0.repo, "1")
    assert again == first[0]
    assert tap.count(kind="blob") == 0, tap.describe()
    assert tap.count(kind="manifest") == 0, tap.describe()
    served_cold = metric(node.url, "mirror_bytes_served_total", source="cold") - cold_before
    assert served_cold >= sum(b.size for b in evicted)
    assert sampler.max_total <= BUDGET + sum(b.size for b in img0.blobs) + largest
    drained(node)
    wait_for("the hot tier within its budget", lambda: du(cache / "blobs") <= BUDGET, timeout=30)
    assert metric(node.url, "mirror_cache_objects", tier="cold") >= len(first[0]) + len(first[1])


def test_second_node_pulls_from_the_shared_bucket(
        catalog: Catalog, make_tap: Callable[[str], RecordingProxy], seaweed: SeaweedS3,
        bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(catalog.registry_url)
    a = start_node(nodes, node_config(tap.url, tmp_path / "a-cache", seaweed, bucket),
                   tmp_path / "a", seaweed)
    b = start_node(nodes, node_config(tap.url, tmp_path / "b-cache", seaweed, bucket),
                   tmp_path / "b", seaweed)
    refs = [("library/big", "latest"), ("library/busybox", "latest"), ("org/team/app", "1.0")]
    via_a = {ref: pull(a.url, *ref) for ref in refs}
    assert tap.count(kind="blob") > 0
    drained(a)

    tap.clear()
    via_b = {ref: pull(b.url, *ref) for ref in refs}
    assert via_b == via_a  # same digests, each verified by the client
    assert tap.count(kind="blob") == 0, tap.describe()
    # Tag records are shared too: A resolved the tags moments ago, so B needs no upstream.
    assert tap.count() == 0, tap.describe()
    blob_bytes = sum(size for got in via_b.values() for size in got.values())
    assert metric(b.url, "mirror_bytes_served_total", source="cold") >= 0.9 * blob_bytes
    assert metric(b.url, "mirror_bytes_served_total", source="upstream") == 0


def test_node_that_lost_its_disk_serves_from_cold_with_upstream_down(
        catalog: Catalog, seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess],
        tmp_path: Path) -> None:
    tap = RecordingProxy(catalog.registry_url)  # stopped below: the upstream goes away
    cache = tmp_path / "cache"
    config = node_config(tap.url, cache, seaweed, bucket, cache={"tag_ttl": "1s"})
    node = start_node(nodes, config, tmp_path / "n", seaweed)
    refs = [("library/big", "latest"), ("library/alpine-ish", "3.19")]
    first = {ref: pull(node.url, *ref) for ref in refs}
    drained(node)
    node.stop()

    shutil.rmtree(cache)  # the hot tier (and its index) is gone
    tap.stop()  # and so is the upstream: connections to its address are refused
    time.sleep(1.2)  # the shared tag records are older than tag_ttl now: revalidation fails
    node.start(timeout=30)
    assert metric(node.url, "mirror_cache_bytes", tier="hot") == 0
    assert metric(node.url, "mirror_cache_objects", tier="hot") == 0

    again = {ref: pull(node.url, *ref) for ref in refs}
    assert again == first
    # Every blob byte came from the cold tier: to the client directly, or promoted ahead of it
    # by prefetch and then served hot. None came from the (dead) upstream.
    assert metric(node.url, "mirror_bytes_served_total", source="upstream") == 0
    assert metric(node.url, "mirror_bytes_served_total", source="cold") > 0
    assert metric(node.url, "mirror_stale_answers_total") >= 1  # tags answered stale
    # The rebuilt accounting matches the disk, and survives another restart.
    on_disk = du(cache / "blobs")
    assert on_disk > 64 * MiB
    assert metric(node.url, "mirror_cache_bytes", tier="hot") == on_disk
    node.stop()
    node.start(timeout=30)
    assert metric(node.url, "mirror_cache_bytes", tier="hot") == on_disk


def run_gc(config_path: Path, env: dict[str, str]) -> str:
    import os

    r = subprocess.run([sys.executable, "-m", "mirror", "gc", "-c", str(config_path)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_gc_command_enforces_budget_and_expires_cold(
        catalog: Catalog, make_tap: Callable[[str], RecordingProxy], seaweed: SeaweedS3,
        bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(catalog.registry_url)
    cache = tmp_path / "cache"
    node = start_node(nodes, node_config(tap.url, cache, seaweed, bucket), tmp_path / "n",
                      seaweed)
    got = pull(node.url, "library/big", "latest")
    drained(node)
    cold_objects = metric(node.url, "mirror_cache_objects", tier="cold")
    node.stop()
    assert du(cache / "blobs") > 64 * MiB

    cfg = node_config(tap.url, cache, seaweed, bucket, cache={"max_size": "8MiB"})
    (tmp_path / "gc.yaml").write_text(yaml.safe_dump(cfg))
    out = run_gc(tmp_path / "gc.yaml", seaweed.env())
    assert "hot tier" in out and "evicted" in out
    assert du(cache / "blobs") <= 8 * MiB
    assert "removed 0 objects" in out  # no max_age: the cold tier keeps everything

    time.sleep(1.5)
    cfg = node_config(tap.url, cache, seaweed, bucket, cache={"max_size": "8MiB"},
                      object_store={"max_age": "1s"})
    (tmp_path / "gc.yaml").write_text(yaml.safe_dump(cfg))
    out = run_gc(tmp_path / "gc.yaml", seaweed.env())
    assert cold_objects >= 3
    assert "now 0 objects, 0 bytes" in out, out
    assert len(got) >= 3
