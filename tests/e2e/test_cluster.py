"""A cluster of mirrors acting as one cache: real `mirror serve` processes on loopback sharing one
SeaweedFS bucket, the real registry behind a recording tap with a slow link.

- Concurrent cold GETs of one layer through three nodes: exactly one upstream GET, every body
  verified by the client, the two non-owners fed by the owner (peer bytes counted).
- The owner killed (-9) mid-download: the other nodes finish with the right bytes and at most
  one more upstream GET.
- A node restarted on an empty disk pulls an image with no upstream request.
- Peer requests without the secret, or with a wrong one, are refused; a node configured with the
  wrong secret still serves (it fetches itself) and the secret is in no log.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mirror.fetch.rendezvous import ranked
from tests.support import ImagePusher, PushedImage, RecordingProxy, big_layer
from tests.support.blobs import push_random_blob
from tests.support.client import fetch
from tests.support.mirror_proc import MirrorProcess, free_port, mirror_config
from tests.support.pulls import metric, pull, wait_metric
from tests.support.seaweed import SeaweedS3
from tests.support.tap import Fault
from tests.support.waiting import wait_for

MiB = 1 << 20
SECRET = "cluster-secret-" + "x" * 24
PEER_HEADER = "X-Mirror-Peer-Secret"


@pytest.fixture(scope="module")
def layered(registry: Any, image_cache_dir: Path) -> PushedImage:
    pusher = ImagePusher(registry.url)
    layers = [big_layer(40, image_cache_dir, seed="cluster0"), big_layer(3, image_cache_dir,
                                                                         seed="cluster1")]
    return pusher.push_image("cluster/app", "1", layers)


def make_cluster(nodes: list[MirrorProcess], n: int, upstream: str, seaweed: SeaweedS3,
                 bucket: str, tmp_path: Path, secrets: list[str] | None = None,
                 **extra: Any) -> list[MirrorProcess]:
    ports = [free_port() for _ in range(n)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    made = []
    for i, port in enumerate(ports):
        secret_file = tmp_path / f"secret{i}"
        secret_file.write_text((secrets or [SECRET] * n)[i] + "\n")
        cache = {"object_store": seaweed.mirror_config(bucket), **extra.get("cache", {})}
        cluster = {"self": urls[i], "peers": urls, "secret_file": str(secret_file),
                   "peer_timeout": extra.get("peer_timeout", "5s")}
        cfg = mirror_config({"docker.io": upstream}, tmp_path / f"cache{i}", cache=cache,
                            cluster=cluster, **{k: v for k, v in extra.items()
                                                if k not in ("cache", "peer_timeout",
                                                             "max_fetches")})
        if "max_fetches" in extra:
            cfg["upstreams"]["docker.io"]["max_concurrent_fetches"] = extra["max_fetches"]
        node = MirrorProcess(cfg, tmp_path / f"node{i}", env=seaweed.env())
        node.port = port
        nodes.append(node)
        made.append(node)
    for node in made:
        node.start(timeout=30)
    return made


def get_verified(base: str, repo: str, digest: str, out: dict[str, Any]) -> None:
    h = hashlib.sha256()
    r = fetch(f"{base}/v2/{repo}/blobs/{digest}", sink=h.update, timeout=120)
    out[base] = (r.status, r.error, "sha256:" + h.hexdigest(), r.size)


def concurrent_gets(bases: list[str], repo: str, digest: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=get_verified, args=(b, repo, digest, results))
               for b in bases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


def owner_of(digest: str, cluster: list[MirrorProcess]) -> MirrorProcess:
    first = ranked(digest, [n.url for n in cluster])[0]
    return next(n for n in cluster if n.url == first)


def test_concurrent_cold_gets_through_three_nodes_make_one_upstream_get(
        layered: PushedImage, registry: Any, make_tap: Callable[[str], RecordingProxy],
        seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(registry.url)
    tap.set_fault(Fault(mode="slow", rate=16 * MiB, match="/blobs/", method="GET"))
    cluster = make_cluster(nodes, 3, tap.url, seaweed, bucket, tmp_path)
    layer = layered.layers[0]
    results = concurrent_gets([n.url for n in cluster], layered.repo, layer.digest)
    assert len(results) == 3
    for base, (status, error, got, size) in results.items():
        assert (status, error, got, size) == (200, None, layer.digest, layer.size), base
    assert tap.count(kind="blob", method="GET") == 1, tap.describe()
    owner = owner_of(layer.digest, cluster)
    for node in cluster:
        received = metric(node.url, "mirror_peer_bytes_total", kind="received")
        if node is owner:
            assert received == 0
            assert metric(node.url, "mirror_peer_bytes_total", kind="sent") >= 2 * layer.size
        else:
            assert received == layer.size
            assert metric(node.url, "mirror_bytes_served_total", source="peer") == layer.size
            # verified and kept in the node's own hot tier: a second GET is a hit
            assert metric(node.url, "mirror_cache_objects", tier="hot") >= 1
    tap.clear()
    again = concurrent_gets([n.url for n in cluster], layered.repo, layer.digest)
    assert all(v[2] == layer.digest for v in again.values())
    assert tap.count() == 0, tap.describe()


def get_through(nodes: list[MirrorProcess], repo: str, digest: str,
                results: dict[str, Any]) -> list[threading.Thread]:
    """One verified GET of the blob through each node, at once, in threads already started."""
    threads = [threading.Thread(target=get_verified, args=(n.url, repo, digest, results))
               for n in nodes]
    for t in threads:
        t.start()
    return threads


def test_owner_killed_mid_download_others_finish(
        layered: PushedImage, registry: Any, make_tap: Callable[[str], RecordingProxy],
        seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(registry.url)
    tap.set_fault(Fault(mode="slow", rate=6 * MiB, match="/blobs/", method="GET"))
    cluster = make_cluster(nodes, 3, tap.url, seaweed, bucket, tmp_path)
    layer = layered.layers[0]
    owner = owner_of(layer.digest, cluster)
    others = [n for n in cluster if n is not owner]
    results: dict[str, Any] = {}
    threads = get_through(others, layered.repo, layer.digest, results)
    # Both non-owners are streaming from the owner, a few MiB in: kill it.
    wait_for("both non-owners fed by the owner", lambda: all(
        metric(n.url, "mirror_peer_bytes_total", kind="received") > 4 * MiB
        for n in others), timeout=60)
    owner.kill()
    for t in threads:
        t.join(180)
    assert len(results) == 2
    for base, (status, error, got, size) in results.items():
        assert (status, error, got, size) == (200, None, layer.digest, layer.size), base
    assert tap.count(kind="blob", method="GET") <= 2, tap.describe()
    # The first resumed where the owner broke off (a Range request), not from byte 0.
    assert tap.bytes_sent(kind="blob", method="GET") < 2 * layer.size


def test_stalled_owner_is_skipped_and_shown_down(
        layered: PushedImage, registry: Any, make_tap: Callable[[str], RecordingProxy],
        seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(registry.url)
    tap.set_fault(Fault(mode="slow", rate=8 * MiB, match="/blobs/", method="GET"))
    cluster = make_cluster(nodes, 3, tap.url, seaweed, bucket, tmp_path)
    layer = layered.layers[0]
    owner = owner_of(layer.digest, cluster)
    others = [n for n in cluster if n is not owner]
    results: dict[str, Any] = {}
    threads = get_through(others, layered.repo, layer.digest, results)
    wait_for("both non-owners fed by the owner", lambda: all(
        metric(n.url, "mirror_peer_bytes_total", kind="received") > 2 * MiB
        for n in others), timeout=60)
    assert owner.proc is not None
    owner.proc.send_signal(signal.SIGSTOP)  # alive, connected, silent
    try:
        for t in threads:
            t.join(180)
        assert len(results) == 2
        for base, (status, error, got, size) in results.items():
            assert (status, error, got, size) == (200, None, layer.digest, layer.size), base
        for node in others:
            doc = json.loads(fetch(node.url + "/status.json").body)
            states = {p["url"]: p["state"] for p in doc["cluster"]["peers"]}
            assert states[owner.url] == "down" and states[node.url] == "self", states
            page = fetch(node.url + "/").body.decode()
            assert "Cluster peers" in page and owner.url in page
    finally:
        owner.proc.send_signal(signal.SIGCONT)
    # The stalled owner had asked the upstream once; the one that took over resumed once.
    assert tap.count(kind="blob", method="GET") <= 2, tap.describe()


def test_a_busy_owner_is_waited_for_not_taken_for_dead(
        layered: PushedImage, registry: Any, make_tap: Callable[[str], RecordingProxy],
        seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(registry.url)
    tap.set_fault(Fault(mode="slow", rate=4 * MiB, match="/blobs/", method="GET"))
    # One upstream slot per node: the owner's second fetch waits for its first to end, far
    # longer than peer_timeout, before it can answer the asking node's request.
    cluster = make_cluster(nodes, 2, tap.url, seaweed, bucket, tmp_path,
                           max_fetches=1, peer_timeout="2s")
    layer = layered.layers[0]
    owner = owner_of(layer.digest, cluster)
    other = next(n for n in cluster if n is not owner)
    small = next(b for b in (push_random_blob(registry.url, "cluster/small", MiB, tmp_path)
                             for _ in range(30)) if owner_of(b.digest, cluster) is owner)
    first: dict[str, Any] = {}
    busy = threading.Thread(target=get_verified, args=(owner.url, layered.repo, layer.digest,
                                                       first))
    busy.start()
    wait_for("the owner downloading", lambda: tap.count(kind="blob", method="GET") == 1)
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    get_verified(other.url, "cluster/small", small.digest, out)
    waited = time.monotonic() - t0
    busy.join(120)
    assert out[other.url][:3] == (200, None, small.digest)
    assert first[owner.url][:3] == (200, None, layer.digest)
    assert waited > 4, waited  # it did wait for the owner's slot, past two peer_timeouts
    assert tap.count(kind="blob", method="GET", path_contains=small.digest) == 1, tap.describe()
    assert metric(other.url, "mirror_peer_requests_total", kind="asked", result="failed") == 0
    assert metric(other.url, "mirror_peer_bytes_total", kind="received") == small.size


def test_node_restarted_on_empty_disk_pulls_with_no_upstream_request(
        layered: PushedImage, registry: Any, make_tap: Callable[[str], RecordingProxy],
        seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(registry.url)
    cluster = make_cluster(nodes, 3, tap.url, seaweed, bucket, tmp_path)
    first = pull(cluster[0].url, layered.repo, "1")
    for node in cluster:
        wait_metric(node.url, "mirror_cold_pending_uploads", 0.0, timeout=120)
    victim = cluster[2]
    victim.stop()
    shutil.rmtree(tmp_path / "cache2")
    tap.clear()
    victim.start(timeout=30)
    assert pull(victim.url, layered.repo, "1") == first
    assert tap.count() == 0, tap.describe()


def test_the_tags_owner_revalidates_once_per_ttl_for_the_cluster(
        layered: PushedImage, registry: Any, make_tap: Callable[[str], RecordingProxy],
        seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(registry.url)
    cluster = make_cluster(nodes, 3, tap.url, seaweed, bucket, tmp_path,
                           cache={"tag_ttl": "3s"},
                           prefetch={"enabled": False})
    url = f"/v2/{layered.repo}/manifests/1"
    accept = [("Accept", layered.media_type)]
    for node in cluster:
        r = fetch(node.url + url, headers=accept)
        assert r.status == 200 and r.header("Docker-Content-Digest") == layered.digest
    assert tap.count(kind="manifest", method="GET") == 1, tap.describe()  # the owner's
    time.sleep(3.2)  # every node's record (the owner's check time) is past tag_ttl now
    tap.clear()
    for _ in range(2):
        for node in cluster:
            r = fetch(node.url + url, headers=accept)
            assert r.status == 200 and r.header("Docker-Content-Digest") == layered.digest
    assert tap.count(kind="manifest", method="HEAD") == 1, tap.describe()
    assert tap.count() == 1, tap.describe()


def test_peer_requests_need_the_secret(
        layered: PushedImage, registry: Any, make_tap: Callable[[str], RecordingProxy],
        seaweed: SeaweedS3, bucket: str, nodes: list[MirrorProcess], tmp_path: Path) -> None:
    tap = make_tap(registry.url)
    wrong = "wrong-secret-" + "y" * 24
    cluster = make_cluster(nodes, 2, tap.url, seaweed, bucket, tmp_path,
                           secrets=[SECRET, wrong])
    layer = layered.layers[1]
    url = f"{cluster[0].url}/_mirror/peer/blobs/docker.io/{layer.digest}?repo={layered.repo}"
    for headers in ({}, {PEER_HEADER: wrong}, {PEER_HEADER: SECRET[:-1]}):
        r = fetch(url, headers=headers)
        assert r.status == 403, (headers, r.status)
        assert SECRET not in r.body.decode(errors="replace")
    assert tap.count() == 0, tap.describe()  # a refused peer request fetches nothing
    assert metric(cluster[0].url, "mirror_peer_requests_total", kind="answered",
                  result="refused") == 3
    r = fetch(url, headers={PEER_HEADER: SECRET})
    assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == layer.digest[7:]

    # The node with the wrong secret is refused by its peer and serves all the same.
    other = next(n for n in cluster if owner_of(layered.layers[0].digest, cluster) is not n)
    out: dict[str, Any] = {}
    get_verified(other.url, layered.repo, layered.layers[0].digest, out)
    assert out[other.url][:3] == (200, None, layered.layers[0].digest)
    for node in cluster:
        assert SECRET not in node.log_text() and wrong not in node.log_text()
        text = fetch(node.url + "/metrics").body.decode()
        assert SECRET not in text and wrong not in text
    if other is cluster[1]:  # asked the owner (node 0) with the wrong secret: refused
        wait_for("the refusal counted", lambda: metric(
            cluster[1].url, "mirror_peer_requests_total", kind="asked", result="failed") >= 1)

