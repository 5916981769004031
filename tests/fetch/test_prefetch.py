"""Prefetch: a manifest's blobs are fetched before clients ask, in manifest order and at most
`prefetch.parallel` at a time; a client's own request never waits behind the queue. Against
the real registry through the recording tap, which slows blob bodies down so that overlaps
show."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.http.keys import SERVICE
from tests.support import AMD64, ARM64, Catalog, RecordingProxy
from tests.support.images import MT_DOCKER_MANIFEST, ImagePusher, PushedImage, synthetic_layer
from tests.support.mirror_app import accept_all, make_app
from tests.support.recording import RecordedRequest
from tests.support.tap import Fault
from tests.support.waiting import until

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
MiB = 1024 * 1024


def push_four_layers(catalog: Catalog) -> PushedImage:
    tag = uuid.uuid4().hex[:8]
    layers = [synthetic_layer(f"pf{i}-{tag}", kib=256) for i in range(4)]
    return ImagePusher(catalog.registry_url).push_image(f"prefetch/order-{tag}", "1", layers)


def blob_gets(tap: RecordingProxy) -> list[RecordedRequest]:
    return [r for r in tap.requests if r.kind == "blob" and r.method == "GET"]


async def all_blobs_fetched(client: TestClient[Any, Any], tap: RecordingProxy,
                            image: PushedImage) -> list[RecordedRequest]:
    """The blob GETs the upstream saw, once every blob of `image` was fetched and the mirror
    has nothing more in flight or queued: no further fetch can show up after this."""
    blobs = client.app[SERVICE].blobs
    want = {b.digest for b in image.blobs}

    def settled() -> bool:
        gets = blob_gets(tap)
        return (want <= {r.path.rsplit("/", 1)[1] for r in gets}
                and all(r.finished is not None for r in gets)
                and blobs.inflight() == 0 and blobs.prefetch_backlog() == 0)

    await until("prefetch to fetch every blob and settle", settled, within=10)
    return blob_gets(tap)


def most_at_once(gets: list[RecordedRequest]) -> int:
    events = sorted([(r.started, 1) for r in gets] + [(r.finished or 0.0, -1) for r in gets],
                    key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


async def mirror_for(aiohttp_client: ClientFactory, tap: RecordingProxy, tmp_path: Path,
                     parallel: int) -> TestClient[Any, Any]:
    tap.set_fault(Fault("slow", rate=2 * MiB, match="/blobs/", method="GET"))
    return await aiohttp_client(make_app({"docker.io": tap.url}, tmp_path / "cache",
                                         prefetch={"parallel": parallel}))


async def get_manifest(client: TestClient[Any, Any], image: PushedImage) -> None:
    r = await client.get(f"/v2/{image.repo}/manifests/1", headers={"Accept": MT_DOCKER_MANIFEST})
    assert r.status == 200
    assert await r.read() == image.manifest


async def assert_served_from_cache(client: TestClient[Any, Any], tap: RecordingProxy,
                                   image: PushedImage) -> None:
    before = len(tap.requests)
    await get_every_blob(client, image)
    assert len(tap.requests) == before, "prefetched blobs must be served without upstream"


async def get_every_blob(client: TestClient[Any, Any], image: PushedImage) -> None:
    for b in image.blobs:
        r = await client.get(f"/v2/{image.repo}/blobs/{b.digest}")
        assert r.status == 200
        assert "sha256:" + hashlib.sha256(await r.read()).hexdigest() == b.digest


@pytest.mark.parametrize("parallel", [1, 2, 3])
async def test_prefetch_runs_in_manifest_order_at_most_parallel_at_once(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path, parallel: int) -> None:
    image = push_four_layers(catalog)
    client = await mirror_for(aiohttp_client, registry_tap, tmp_path, parallel=parallel)
    await get_manifest(client, image)
    gets = await all_blobs_fetched(client, registry_tap, image)
    started = [r.path.rsplit("/", 1)[1] for r in gets]
    assert sorted(started) == sorted(b.digest for b in image.blobs)
    if parallel == 1:
        assert started == [b.digest for b in image.blobs]  # manifest order
    assert most_at_once(gets) == parallel  # bounded, and really parallel
    await assert_served_from_cache(client, registry_tap, image)


async def test_a_client_request_does_not_wait_behind_queued_prefetches(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    image = push_four_layers(catalog)
    client = await mirror_for(aiohttp_client, registry_tap, tmp_path, parallel=1)
    await get_manifest(client, image)
    last = image.blobs[-1]  # queued behind the config and three layers
    r = await client.get(f"/v2/{image.repo}/blobs/{last.digest}")
    assert r.status == 200
    assert "sha256:" + hashlib.sha256(await r.read()).hexdigest() == last.digest
    gets = await all_blobs_fetched(client, registry_tap, image)
    by_digest = {r.path.rsplit("/", 1)[1]: r for r in gets}
    assert len(gets) == len(by_digest) == len(image.blobs), "each blob fetched upstream once"
    # The first layer, not the config ahead of it: the config is a few hundred bytes and may
    # be in before the client asks; a layer takes ~125 ms through the slowed tap.
    first = by_digest[image.blobs[1].digest]
    assert first.finished is not None and len(image.blobs) == 5
    assert by_digest[last.digest].started < first.finished, "the client's blob was queued"
    await assert_served_from_cache(client, registry_tap, image)


def ahead_threads() -> dict[int, int]:
    """Threads of this process that write downloads nobody reads yet: {native id: nice}."""
    return {t.native_id: os.getpriority(os.PRIO_PROCESS, t.native_id)
            for t in threading.enumerate()
            if t.name.startswith("mirror-ahead") and t.native_id is not None and t.is_alive()}


async def test_prefetches_are_written_at_low_priority(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    """On a host shared with clients, a download that no client is reading yet yields the CPU
    (nice 10 on its writer threads); downloads a client waits for stay at normal priority."""
    before = set(ahead_threads())
    image = push_four_layers(catalog)
    client = await mirror_for(aiohttp_client, registry_tap, tmp_path, parallel=2)
    await get_manifest(client, image)
    await all_blobs_fetched(client, registry_tap, image)
    new = {tid: nice for tid, nice in ahead_threads().items() if tid not in before}
    assert new, "prefetched blobs were not written by the low-priority threads"
    assert set(new.values()) == {10}
    await assert_served_from_cache(client, registry_tap, image)


async def test_a_download_a_client_waits_for_is_not_deprioritised(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    before = set(ahead_threads())
    image = push_four_layers(catalog)
    client = await aiohttp_client(make_app({"docker.io": registry_tap.url}, tmp_path / "cache",
                                           prefetch={"enabled": False}))
    await get_every_blob(client, image)
    assert len(blob_gets(registry_tap)) == len(image.blobs)
    assert set(ahead_threads()) <= before, "a client's own download went to the low-priority threads"


async def test_many_pulls_of_one_cold_manifest_queue_its_blobs_once(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    image = push_four_layers(catalog)
    client = await mirror_for(aiohttp_client, registry_tap, tmp_path, parallel=1)
    blobs = client.app[SERVICE].blobs
    for _ in range(10):  # while the first prefetches are still downloading
        await get_manifest(client, image)
    assert blobs.prefetch_backlog() <= len(image.blobs) - 1  # each queued once (not 10 times)
    gets = await all_blobs_fetched(client, registry_tap, image)
    assert sorted(r.path.rsplit("/", 1)[1] for r in gets) == sorted(b.digest for b in image.blobs)
    assert blobs.prefetch_backlog() == 0
    await assert_served_from_cache(client, registry_tap, image)


def push_two_platforms(catalog: Catalog) -> PushedImage:
    tag = uuid.uuid4().hex[:8]
    p = ImagePusher(catalog.registry_url)
    repo = f"prefetch/multi-{tag}"
    amd = p.push_image(repo, None, [synthetic_layer(f"amd-{tag}", kib=256)], AMD64, oci=True)
    arm = p.push_image(repo, None, [synthetic_layer(f"arm-{tag}", kib=256)], ARM64, oci=True)
    return p.push_index(repo, "1", [amd, arm], oci=True)


def fetched(tap: RecordingProxy, image: PushedImage) -> set[str]:
    """Which of the image's manifest and blobs the upstream was asked for (GET)."""
    names = {image.digest, *(b.digest for b in image.blobs)}
    return {r.path.rsplit("/", 1)[1] for r in tap.requests if r.method == "GET"} & names


async def wait_fetched(tap: RecordingProxy, image: PushedImage) -> None:
    want = {image.digest, *(b.digest for b in image.blobs)}
    await until(f"{image.platform} fetched", lambda: fetched(tap, image) == want and all(
        r.finished is not None for r in blob_gets(tap)))


async def test_an_arm64_client_gets_its_own_platform_prefetched_not_amd64(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    """Without prefetch.platforms the index names no platform: the child the client asks for
    next does, and its blobs are what gets prefetched."""
    index = push_two_platforms(catalog)
    amd, arm = index.children
    client = await mirror_for(aiohttp_client, registry_tap, tmp_path, parallel=1)
    r = await client.get(f"/v2/{index.repo}/manifests/1", headers=accept_all())
    assert r.status == 200 and r.headers["Docker-Content-Digest"] == index.digest
    r = await client.get(f"/v2/{index.repo}/manifests/{arm.digest}", headers=accept_all())
    assert r.status == 200
    await wait_fetched(registry_tap, arm)  # behind any amd64 prefetch queued before it
    assert fetched(registry_tap, amd) == set(), registry_tap.describe()
    await assert_served_from_cache(client, registry_tap, arm)


async def test_configured_platforms_are_prefetched_with_the_index(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    index = push_two_platforms(catalog)
    amd, arm = index.children
    registry_tap.set_fault(Fault("slow", rate=2 * MiB, match="/blobs/", method="GET"))
    client = await aiohttp_client(make_app({"docker.io": registry_tap.url}, tmp_path / "cache",
                                           prefetch={"parallel": 1,
                                                     "platforms": ["linux/arm64/v8"]}))
    for _ in range(5):  # fetched once, however often the index is pulled
        r = await client.get(f"/v2/{index.repo}/manifests/1", headers=accept_all())
        assert r.status == 200
    await wait_fetched(registry_tap, arm)
    assert len([r for r in registry_tap.requests if arm.digest in r.path]) == 1
    assert fetched(registry_tap, amd) == set(), registry_tap.describe()
    r = await client.get(f"/v2/{index.repo}/manifests/{arm.digest}", headers=accept_all())
    assert r.status == 200 and await r.read() == arm.manifest
    await assert_served_from_cache(client, registry_tap, arm)
