"""The bad day: upstream down, rate-limited, broken bodies, stalls, full disk, kill -9 (issue 6).

Every test ends with: no wrong byte served whole, nothing wrong committed, the next request
succeeds, the process is still up."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Catalog, FakeRegistry, Fault, RecordingProxy, fetch
from tests.support.blobs import MiB, PushedBlob, push_random_blob
from tests.support.client import hashed_get
from tests.support.images import synthetic_layer
from tests.support.mirror_app import ALL_MANIFEST_TYPES
from tests.support.mirror_proc import MirrorFleet, MirrorProcess, mirror_config
from tests.support.tmpfs import tmpfs
from tests.support.verify import verify_dir_copy

pytestmark = pytest.mark.e2e
ACCEPT = [("Accept", mt) for mt in ALL_MANIFEST_TYPES]
MakeMirror = Callable[..., MirrorProcess]


@pytest.fixture
def make_mirror(tmp_path: Path) -> Iterator[MakeMirror]:
    with MirrorFleet(tmp_path) as fleet:
        def make(upstream_url: str, name: str = "m", upstream: dict[str, Any] | None = None,
                 **extra: Any) -> MirrorProcess:
            extra.setdefault("prefetch", {"enabled": False})
            cfg = mirror_config({"docker.io": upstream_url}, tmp_path / "cache", **extra)
            cfg["upstreams"]["docker.io"].update(upstream or {})
            return fleet.start(cfg, name)

        yield make


def metric(mirror: MirrorProcess, name: str, **labels: str) -> float:
    text = fetch(f"{mirror.url}/metrics").body.decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def skopeo_pull(mirror: MirrorProcess, ref: str, out: Path) -> subprocess.CompletedProcess[str]:
    shutil.rmtree(out, ignore_errors=True)
    return subprocess.run(["skopeo", "--tmpdir", str(out.parent), "copy", "--all",
                           "--src-tls-verify=false", f"docker://{mirror.hostport}/{ref}",
                           f"dir:{out}"], capture_output=True, text=True, timeout=300)


UPSTREAM_DOWN = {
    "refused": Fault(mode="refuse"),
    "503": Fault(mode="status", status=503),
    "429": Fault(mode="status", status=429, headers={"Retry-After": "120"}),
    "401": Fault(mode="status", status=401),  # a credential that stopped working
}


@pytest.mark.parametrize("down", list(UPSTREAM_DOWN), ids=list(UPSTREAM_DOWN))
def test_cached_tags_served_stale_when_upstream_fails(make_mirror: MakeMirror,
                                                     registry_tap: RecordingProxy,
                                                     catalog: Catalog, tmp_path: Path,
                                                     down: str) -> None:
    mirror = make_mirror(registry_tap.url, cache={"tag_ttl": "1s"})
    refs = ["library/busybox:latest", "org/team/app:1.0"]
    for ref in refs:
        assert skopeo_pull(mirror, ref, tmp_path / "a").returncode == 0
    registry_tap.set_fault(UPSTREAM_DOWN[down])
    registry_tap.clear()
    time.sleep(1.2)  # past the tag TTL: revalidation is due and will fail
    for ref in refs:
        r = skopeo_pull(mirror, ref, tmp_path / "b")
        assert r.returncode == 0, r.stderr
        verify_dir_copy(tmp_path / "b", catalog[ref])
    assert metric(mirror, "mirror_stale_answers_total") >= len(refs)
    # never a GET after a failed HEAD: revalidation costs no pull quota
    assert registry_tap.count(method="GET", kind="manifest") == 0, registry_tap.describe()
    assert registry_tap.count(method="HEAD", kind="manifest") >= 1 or down == "429"


def test_deleted_tag_is_404_unless_configured(make_mirror: MakeMirror,
                                              registry_tap: RecordingProxy,
                                              catalog: Catalog) -> None:
    strict = make_mirror(registry_tap.url, cache={"tag_ttl": "0s"})
    keep = make_mirror(registry_tap.url, name="keep",
                       cache={"tag_ttl": "0s", "dir": str(strict.workdir / "keepcache"),
                              "keep_deleted_tags": True})
    url = "/v2/library/alpine-ish/manifests/3.19"
    for m in (strict, keep):
        assert fetch(m.url + url, headers=ACCEPT).status == 200
    registry_tap.set_fault(Fault(mode="status", status=404, match="/manifests/"))
    r = fetch(strict.url + url, headers=ACCEPT)
    assert r.status == 404 and json.loads(r.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = fetch(keep.url + url, headers=ACCEPT)
    assert r.status == 200
    assert r.header("Docker-Content-Digest") == catalog["library/alpine-ish:3.19"].digest


def test_max_stale_bounds_stale_answers(make_mirror: MakeMirror, registry_tap: RecordingProxy,
                                        catalog: Catalog) -> None:
    mirror = make_mirror(registry_tap.url, cache={"tag_ttl": "0s", "max_stale": "1s"})
    url = "/v2/library/alpine-ish/manifests/3.19-oci"
    assert fetch(mirror.url + url, headers=ACCEPT).status == 200
    registry_tap.set_fault(Fault(mode="status", status=503))
    assert fetch(mirror.url + url, headers=ACCEPT).status == 200  # stale, within max_stale
    time.sleep(1.3)
    assert (fetch(mirror.url + url, headers=ACCEPT).status or 0) >= 500  # too old to serve


def test_offline_serves_cache_and_404s_misses(make_mirror: MakeMirror,
                                              registry_tap: RecordingProxy, catalog: Catalog,
                                              tmp_path: Path) -> None:
    online = make_mirror(registry_tap.url, cache={"tag_ttl": "1s"})
    assert skopeo_pull(online, "library/multiarch:latest", tmp_path / "a").returncode == 0
    online.stop()
    registry_tap.clear()
    offline = make_mirror("http://127.0.0.1:9", offline=True, cache={"tag_ttl": "1s"})
    time.sleep(1.1)
    r = skopeo_pull(offline, "library/multiarch:latest", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    verify_dir_copy(tmp_path / "b", catalog["library/multiarch:latest"])
    miss = fetch(offline.url + "/v2/library/busybox/manifests/1.36", headers=ACCEPT)
    assert miss.status == 404
    assert "offline" in json.loads(miss.body)["errors"][0]["message"]
    assert registry_tap.count() == 0


def test_429_backs_off_and_exposes_rate_limit(make_mirror: MakeMirror,
                                              make_fake_registry: Callable[..., FakeRegistry],
                                              catalog: Catalog) -> None:
    fake = make_fake_registry(rate_limit=100)
    fake.add_image("library/app", "1", [synthetic_layer("rl", 4)])
    fake.add_image("library/app", "2", [synthetic_layer("rl2", 4)])
    fake.add_image("library/app", "3", [synthetic_layer("rl3", 4)])
    tap = RecordingProxy(fake.url)
    try:
        mirror = make_mirror(tap.url)
        assert fetch(mirror.url + "/v2/library/app/manifests/1", headers=ACCEPT).status == 200
        assert metric(mirror, "mirror_upstream_ratelimit_remaining", upstream="docker.io") == 99
        tap.set_fault(Fault(mode="status", status=429, headers={"Retry-After": "60"}))
        r = fetch(mirror.url + "/v2/library/app/manifests/2", headers=ACCEPT)
        assert r.status == 429
        tap.clear()
        r = fetch(mirror.url + "/v2/library/app/manifests/3", headers=ACCEPT)
        assert r.status == 429 and tap.count() == 0  # backing off: upstream not asked
        assert metric(mirror, "mirror_upstream_backoff_seconds") > 0
        # what is cached keeps being served during the back-off
        assert fetch(mirror.url + "/v2/library/app/manifests/1", headers=ACCEPT).status == 200
    finally:
        tap.stop()


def test_manifest_faults_never_serve_wrong_bytes(make_mirror: MakeMirror,
                                                 registry_tap: RecordingProxy,
                                                 catalog: Catalog) -> None:
    mirror = make_mirror(registry_tap.url)
    img = catalog["library/busybox:1.36"]
    url = f"{mirror.url}/v2/{img.repo}/manifests/{img.digest}"
    for fault in (Fault(mode="corrupt", offset=10, match="/manifests/", count=1),
                  Fault(mode="truncate", offset=10, match="/manifests/", count=1),
                  Fault(mode="reset", offset=10, match="/manifests/", count=1)):
        registry_tap.set_fault(fault)
        r = fetch(url, headers=ACCEPT)
        assert r.status != 200 or hashlib.sha256(r.body).hexdigest() == img.digest[7:], fault
    registry_tap.clear_fault()
    r = fetch(url, headers=ACCEPT)
    assert r.status == 200 and r.body == img.manifest


@pytest.fixture
def blob(registry_tap: RecordingProxy, tmp_path: Path) -> PushedBlob:
    return push_random_blob(registry_tap.target, "test/faults", 24 * MiB, tmp_path)



def test_stalled_upstream_is_timed_out_and_resumed(make_mirror: MakeMirror,
                                                   registry_tap: RecordingProxy,
                                                   blob: PushedBlob) -> None:
    mirror = make_mirror(registry_tap.url, upstream={"read_timeout": "1s"})
    registry_tap.set_fault(Fault(mode="stall", offset=4 * MiB, seconds=30, match="/blobs/",
                                 count=1))
    r, digest = hashed_get(f"{mirror.url}/v2/{blob.repo}/blobs/{blob.digest}")
    assert (r.status, r.error, digest) == (200, None, blob.digest)
    gets = registry_tap.filter(method="GET", kind="blob")
    assert len(gets) == 2 and (gets[1].header("Range") or "").startswith("bytes=")


def test_stalled_client_does_not_block_other_readers(make_mirror: MakeMirror,
                                                     registry_tap: RecordingProxy,
                                                     blob: PushedBlob) -> None:
    mirror = make_mirror(registry_tap.url)
    registry_tap.set_fault(Fault(mode="slow", rate=48 * MiB, match="/blobs/"))
    path = f"/v2/{blob.repo}/blobs/{blob.digest}"
    stalled = socket.create_connection(("127.0.0.1", mirror.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # then never reads
    try:
        for _ in range(2):
            r, digest = hashed_get(mirror.url + path)
            assert (r.status, r.error, digest) == (200, None, blob.digest)
    finally:
        stalled.close()
    assert registry_tap.count(method="GET", kind="blob") == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs as the hot tier: a real ENOSPC, not a simulated one (needs root)."""
    with tmpfs(tmp_path / "small", "20m") as mnt:
        yield mnt


def test_full_disk_streams_through_uncached(make_mirror: MakeMirror, registry_tap: RecordingProxy,
                                            blob: PushedBlob, small_disk: Path,
                                            catalog: Catalog) -> None:
    mirror = make_mirror(registry_tap.url, cache={"dir": str(small_disk)})
    url = f"{mirror.url}/v2/{blob.repo}/blobs/{blob.digest}"  # 24 MiB > 20 MiB disk
    for _ in range(2):
        r, digest = hashed_get(url)
        assert (r.status, r.error, digest) == (200, None, blob.digest)
    assert metric(mirror, "mirror_cache_write_errors_total") >= 1
    assert not list((small_disk / "tmp").iterdir())
    # small content still caches, the process is up
    small = catalog["library/alpine-ish:3.19"].layers[0]
    assert fetch(f"{mirror.url}/v2/library/alpine-ish/blobs/{small.digest}").status == 200
    registry_tap.clear()
    assert fetch(f"{mirror.url}/v2/library/alpine-ish/blobs/{small.digest}").status == 200
    assert registry_tap.count() == 0


def test_kill_9_during_download_leaves_no_trace(make_mirror: MakeMirror,
                                                registry_tap: RecordingProxy,
                                                blob: PushedBlob) -> None:
    mirror = make_mirror(registry_tap.url)
    registry_tap.set_fault(Fault(mode="slow", rate=4 * MiB, match="/blobs/"))
    path = f"/v2/{blob.repo}/blobs/{blob.digest}"
    conn = socket.create_connection(("127.0.0.1", mirror.port))
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    cache = mirror.workdir.parent / "cache"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        temps = list((cache / "tmp").iterdir())
        if temps and temps[0].stat().st_size > 2 * MiB:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("download never started")
    mirror.kill()
    conn.close()
    assert list((cache / "tmp").iterdir()), "a partial download should be on disk after kill -9"
    registry_tap.clear_fault()
    mirror.start()
    assert not list((cache / "tmp").iterdir()), "leftovers must be swept at start"
    final = cache / "blobs" / "sha256" / blob.digest[7:9] / blob.digest[7:]
    assert not final.exists()
    r, digest = hashed_get(mirror.url + path)
    assert (r.status, r.error, digest) == (200, None, blob.digest)
    assert final.exists()
