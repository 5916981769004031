"""server.workers: 2 — two processes on one port sharing the cache (issue 11).

Which worker answers a connection is the kernel's choice (SO_REUSEPORT), so tests that need
both workers involved look at the processes themselves: the lock file names the worker that
downloads, and the other one has the shared part file open while it serves its clients."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Fault, RecordingProxy, fetch
from tests.support.blobs import MiB, PushedBlob, push_random_blob
from tests.support.client import Reply, hashed_get
from tests.support.images import ALL_MANIFEST_TYPES, Catalog
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.promtext import scrape
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def open_parts(pid: int) -> list[str]:
    """Files under tmp/ ending in .part that process `pid` has open."""
    out = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.endswith(".part"):
                out.append(target)
    except OSError:
        pass
    return out


@pytest.fixture
def workers(registry_tap: RecordingProxy, tmp_path: Path) -> Iterator[MirrorProcess]:
    cfg = mirror_config({"docker.io": registry_tap.url}, tmp_path / "cache",
                        prefetch={"enabled": False}, server={"workers": 2})
    with MirrorProcess(cfg, workdir=tmp_path / "proc") as proc:
        assert proc.proc is not None
        sup = proc.proc.pid
        wait_for("two workers", lambda: len(children(sup)) == 2)
        wait_for("both workers listening", lambda: all(
            fetch(f"{proc.url}/healthz").status == 200 for _ in range(6)))
        assert "exited" not in proc.log_text(), proc.log_text()  # both started first time
        yield proc


@pytest.fixture
def blob(registry_tap: RecordingProxy, tmp_path: Path) -> PushedBlob:
    return push_random_blob(registry_tap.target, "test/workers", 24 * MiB, tmp_path)


def tag_row(mirror: MirrorProcess, repo: str, tag: str | None) -> str | None:
    """The digest the shared index database holds for a tag (None: no row yet)."""
    with sqlite3.connect(Path(mirror.config["cache"]["dir"]) / "index.db") as conn:
        row = conn.execute("SELECT digest FROM tags WHERE upstream='docker.io' AND repo=? AND "
                           "tag=?", (repo, tag)).fetchone()
    return str(row[0]) if row else None



class Clients:
    """Clients started one by one, each on its own connection, each hashing what it gets."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[Reply, str]] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, n: int = 1) -> None:
        for _ in range(n):
            t = threading.Thread(target=self._run)
            t.start()
            self._threads.append(t)

    def _run(self) -> None:
        result = hashed_get(self.url)
        with self._lock:
            self.results.append(result)

    def join(self) -> list[tuple[Reply, str]]:
        for t in self._threads:
            t.join(120)
        return self.results


def tail_elsewhere(mirror: MirrorProcess, cache: Path, blob: PushedBlob,
                   clients: Clients) -> tuple[int, int]:
    """(holder pid, other worker pid) once the download runs and the other worker tails it:
    more clients are started until the kernel has given the other worker one of them."""
    assert mirror.proc is not None
    lock = cache / "tmp" / f"sha256-{blob.digest[7:]}.lock"
    holder = int(str(wait_for("the download's lock", lambda: lock.exists()
                              and lock.read_text().strip())))
    other = next(p for p in children(mirror.proc.pid) if p != holder)
    for _ in range(40):
        if open_parts(other):
            return holder, other
        clients.start()
        time.sleep(0.1)
    raise AssertionError("no client reached the second worker")


def test_the_supervisor_does_not_load_the_server(workers: MirrorProcess) -> None:
    """The supervisor only starts and watches processes: without aiohttp and the app it holds
    ~20 MiB less, and with N workers every process's memory counts."""
    assert workers.proc is not None
    sup = workers.proc.pid
    mapped = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in [sup, *children(sup)]}
    assert len(mapped) == 3
    for pid, maps in mapped.items():
        loaded = "/aiohttp/" in maps and "/multidict/" in maps  # their C extensions
        assert loaded == (pid != sup), (pid, sup)


def test_ten_clients_two_workers_one_upstream_fetch(workers: MirrorProcess,
                                                    registry_tap: RecordingProxy,
                                                    blob: PushedBlob, tmp_path: Path) -> None:
    registry_tap.set_fault(Fault(mode="slow", rate=8 * MiB, match="/blobs/", method="GET"))
    clients = Clients(f"{workers.url}/v2/{blob.repo}/blobs/{blob.digest}")
    clients.start(10)
    tail_elsewhere(workers, tmp_path / "cache", blob, clients)
    results = clients.join()
    registry_tap.wait_idle()
    assert registry_tap.count(method="GET", kind="blob") == 1, registry_tap.describe()
    assert len(results) >= 10
    for reply, digest in results:
        assert reply.status == 200 and reply.error is None, (reply.status, reply.error)
        assert reply.size == blob.size and digest == blob.digest
    # /metrics from whichever worker answers: the requests both of them served, the bytes
    # fetched once, two workers.
    for _ in range(6):
        page = scrape(workers.url)
        assert page.sum("mirror_requests_total", type="blob") == len(results)
        assert page.sum("mirror_upstream_bytes_total") == blob.size
        assert page.sum("mirror_workers") == 2
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # lock, part and meta cleaned up


def test_kill_9_of_the_downloading_worker(workers: MirrorProcess, registry_tap: RecordingProxy,
                                          blob: PushedBlob, tmp_path: Path) -> None:
    assert workers.proc is not None
    registry_tap.set_fault(Fault(mode="slow", rate=4 * MiB, match="/blobs/", method="GET"))
    clients = Clients(f"{workers.url}/v2/{blob.repo}/blobs/{blob.digest}")
    clients.start(6)
    cache = tmp_path / "cache"
    holder, _ = tail_elsewhere(workers, cache, blob, clients)
    part = cache / "tmp" / f"sha256-{blob.digest[7:]}.part"
    wait_for("a few MiB downloaded", lambda: part.exists() and part.stat().st_size > 4 * MiB)
    os.kill(holder, signal.SIGKILL)
    registry_tap.clear_fault()
    results = clients.join()
    complete = [d for r, d in results if r.status == 200 and r.error is None
                and r.size == blob.size]
    assert complete, "the other worker's clients should have completed"
    assert all(d == blob.digest for d in complete), "a complete body with wrong bytes"
    # The surviving worker took over the part and asked only for what was missing.
    gets = registry_tap.filter(method="GET", kind="blob")
    assert len(gets) == 2, registry_tap.describe()
    resumed = gets[1].header("Range")
    assert resumed is not None and resumed.startswith("bytes=") and resumed != "bytes=0-"
    # The supervisor started a new worker in place of the dead one.
    wait_for("a new worker", lambda: len(children(workers.proc.pid)) == 2  # type: ignore[union-attr]
             and holder not in children(workers.proc.pid))  # type: ignore[union-attr]
    reply, digest = hashed_get(f"{workers.url}/v2/{blob.repo}/blobs/{blob.digest}")
    assert reply.status == 200 and digest == blob.digest
    final = cache / "blobs" / "sha256" / blob.digest[7:9] / blob.digest[7:]
    assert final.stat().st_size == blob.size
    wait_for("tmp/ cleaned up", lambda: not list((cache / "tmp").iterdir()), timeout=10)


def test_workers_share_tags_and_manifests(workers: MirrorProcess, registry_tap: RecordingProxy,
                                          catalog: Catalog) -> None:
    image = catalog["library/alpine-ish:3.19"]
    accept = [("Accept", mt) for mt in ALL_MANIFEST_TYPES]
    first = fetch(f"{workers.url}/v2/{image.repo}/manifests/{image.tag}", headers=accept)
    assert first.status == 200
    # The tag record reaches the shared index in a batch: the other worker reads it there.
    wait_for("the tag record in the index", lambda: tag_row(workers, image.repo, image.tag)
             == image.digest, timeout=10)
    for _ in range(12):  # fresh connections: both workers answer some of these
        for method in ("HEAD", "GET"):
            r = fetch(f"{workers.url}/v2/{image.repo}/manifests/{image.tag}", method=method,
                      headers=accept)
            assert r.status == 200 and r.header("Docker-Content-Digest") == image.digest
        r = fetch(f"{workers.url}/v2/{image.repo}/manifests/{image.digest}", headers=accept)
        assert r.status == 200 and r.body == image.manifest
    manifests = registry_tap.filter(kind="manifest")
    assert len(manifests) == 1, registry_tap.describe()  # the first pull's GET, nothing more


def test_a_hit_whose_file_another_worker_evicted_is_fetched_again(
        workers: MirrorProcess, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    layer = catalog["library/alpine-ish:3.19"].layers[0]
    url = f"{workers.url}/v2/library/alpine-ish/blobs/{layer.digest}"
    for _ in range(6):  # fresh connections: both workers learn the blob
        reply, digest = hashed_get(url)
        assert reply.status == 200 and digest == layer.digest
    # What eviction by the worker keeping the budget does, behind both workers' backs.
    (tmp_path / "cache" / "blobs" / "sha256" / layer.digest[7:9] / layer.digest[7:]).unlink()
    registry_tap.clear()
    for _ in range(6):
        reply, digest = hashed_get(url)
        assert reply.status == 200 and digest == layer.digest, reply.status
    # Fetched again once: the worker that finds the file gone first downloads it, and the
    # other finds it back in place (or follows that download), never a second fetch.
    assert registry_tap.count(method="GET", kind="blob") == 1, registry_tap.describe()
