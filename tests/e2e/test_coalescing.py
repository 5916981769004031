"""One upstream fetch per blob, streamed to every waiting client (issue 3)."""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Fault, RecordingProxy
from tests.support.blobs import MiB, PushedBlob, concurrently, push_random_blob
from tests.support.client import Reply, hashed_get
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def mirror_proc(registry_tap: RecordingProxy, tmp_path: Path) -> Iterator[MirrorProcess]:
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        prefetch={"enabled": False})
    with MirrorProcess(cfg, workdir=tmp_path) as proc:
        yield proc


def peak_rss_mib(proc: MirrorProcess) -> float:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")



def run_concurrently(n: int, fn: Callable[[int], object]) -> list[object]:
    return concurrently(n, fn)[1]


@pytest.fixture
def blob(registry_tap: RecordingProxy, tmp_path: Path) -> PushedBlob:
    size = 64 * MiB
    return push_random_blob(registry_tap.target, "test/coalesce", size, tmp_path)


def test_twenty_clients_one_upstream_fetch(mirror_proc: MirrorProcess, registry_tap: RecordingProxy,
                                           blob: PushedBlob) -> None:
    # Throttle the upstream so every client surely arrives while the download is running.
    registry_tap.set_fault(Fault(mode="slow", rate=32 * MiB, match="/blobs/", method="GET"))
    url = f"{mirror_proc.url}/v2/{blob.repo}/blobs/{blob.digest}"
    mid = (blob.size // 2, blob.size // 2 + 999_999)
    results: list[tuple[Reply, str] | None] = [None] * 19

    def client(i: int) -> None:
        results[i] = hashed_get(url)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(19)]
    for t in threads:
        t.start()
    # A Range request while the blob is still downloading: sent once the upstream transfer has
    # begun, and (checked below) before it ended.
    wait_for("the upstream transfer to start", lambda: any(
        r.bytes_sent > 0 for r in registry_tap.filter(method="GET", kind="blob")))
    range_sent = time.monotonic()
    ranged, ranged_digest = hashed_get(url, {"Range": f"bytes={mid[0]}-{mid[1]}"})
    for t in threads:
        t.join(120)
    registry_tap.wait_idle()
    gets = registry_tap.filter(method="GET", kind="blob")
    assert len(gets) == 1, registry_tap.describe()
    assert gets[0].finished is not None and range_sent < gets[0].finished, "not mid-download"
    assert ranged.error is None and ranged.status == 206
    assert ranged_digest == "sha256:" + hashlib.sha256(blob.slice(*mid)).hexdigest()
    for i, res in enumerate(results):
        assert res is not None, i
        reply, digest = res
        assert reply.error is None, (i, reply.error)
        assert reply.status == 200 and reply.size == blob.size
        assert digest == blob.digest
    assert peak_rss_mib(mirror_proc) < 200


@pytest.mark.parametrize("fault", [
    Fault(mode="corrupt", offset=5 * MiB, match="/blobs/", method="GET", count=1),
    Fault(mode="truncate", offset=5 * MiB, match="/blobs/", method="GET"),  # every attempt
    Fault(mode="reset", offset=3 * MiB, match="/blobs/", method="GET"),
], ids=lambda f: f.mode)
def test_bad_upstream_body_reaches_no_client_whole(mirror_proc: MirrorProcess,
                                                   registry_tap: RecordingProxy, blob: PushedBlob,
                                                   fault: Fault) -> None:
    registry_tap.set_fault(fault)
    url = f"{mirror_proc.url}/v2/{blob.repo}/blobs/{blob.digest}"
    results = run_concurrently(5, lambda i: hashed_get(url))
    for res in results:
        assert isinstance(res, tuple)
        reply, digest = res
        # Each client either got an error status before any body, or a cut transfer:
        # never a complete body that hashes wrong.
        complete = reply.error is None and reply.status == 200 and reply.size == blob.size
        assert not complete or digest == blob.digest, reply
        assert reply.error is not None or reply.status != 200, reply
    registry_tap.wait_idle()
    cache = mirror_proc.workdir / "cache" / "blobs" / "sha256"
    assert not (cache / blob.digest[7:9] / blob.digest[7:]).exists()
    assert not list((mirror_proc.workdir / "cache" / "tmp").iterdir())
    registry_tap.clear_fault()
    reply, digest = hashed_get(url)
    assert reply.status == 200 and reply.error is None and digest == blob.digest
    assert "Traceback" not in mirror_proc.log_text()


def test_cut_upstream_transfer_is_resumed_with_range(mirror_proc: MirrorProcess,
                                                     registry_tap: RecordingProxy,
                                                     blob: PushedBlob) -> None:
    registry_tap.set_fault(Fault(mode="reset", offset=10 * MiB, match="/blobs/", method="GET",
                                 count=1))
    url = f"{mirror_proc.url}/v2/{blob.repo}/blobs/{blob.digest}"
    results = run_concurrently(3, lambda i: hashed_get(url))
    for res in results:
        assert isinstance(res, tuple)
        reply, digest = res
        assert reply.status == 200 and reply.error is None and digest == blob.digest
    gets = registry_tap.filter(method="GET", kind="blob")
    assert len(gets) == 2, registry_tap.describe()
    assert (gets[1].header("Range") or "").startswith("bytes=")


def test_fetch_finishes_when_every_client_left(mirror_proc: MirrorProcess,
                                               registry_tap: RecordingProxy,
                                               blob: PushedBlob) -> None:
    registry_tap.set_fault(Fault(mode="slow", rate=64 * MiB, match="/blobs/", method="GET"))
    url = f"{mirror_proc.url}/v2/{blob.repo}/blobs/{blob.digest}"
    conn = http.client.HTTPConnection("127.0.0.1", mirror_proc.port, timeout=30)
    conn.request("GET", url.split(str(mirror_proc.port), 1)[1])
    resp = conn.getresponse()
    assert resp.status == 200
    assert len(resp.read(MiB)) == MiB
    conn.close()  # the only client walks away after 1 MiB
    registry_tap.wait_idle(timeout=30)
    registry_tap.clear()
    reply, digest = hashed_get(url)
    assert reply.status == 200 and digest == blob.digest
    assert registry_tap.count() == 0, "the abandoned fetch should have completed into the cache"
