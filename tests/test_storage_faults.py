"""Storage faults a mirror meets in operation (issue #16, items 15-18): files deleted behind its
back, upstreams that lie about lengths, a full disk under the index database, maintenance tools
run on a live cache directory."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.observe.metrics import Metrics
from mirror.oci.errors import CacheConflict
from mirror.oci.models import Digest
from mirror.store.db import Database
from mirror.store.dirlock import CacheDirLock
from mirror.store.disk import DiskTier
from mirror.store.xprocess import SharedPart
from tests.support import Catalog, Fault, RecordingProxy
from tests.support.mirror_app import make_app
from tests.support.mirror_proc import MirrorProcess, mirror_config
from tests.support.waiting import until

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def blob_file(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest[7:9] / digest[7:]


async def test_a_hit_whose_file_was_deleted_is_fetched_again(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    """Single process: an operator deleted a cached file (or a delete raced a re-commit). The
    entry is forgotten and the blob fetched again, as the worker path does; never a 500."""
    cache = tmp_path / "cache"
    mirror = await aiohttp_client(make_app({"docker.io": registry_tap.url}, cache,
                                           prefetch={"enabled": False}))
    layer = catalog["library/alpine-ish:3.19"].layers[0]
    url = f"/v2/library/alpine-ish/blobs/{layer.digest}"
    r = await mirror.get(url)
    assert r.status == 200 and "sha256:" + hashlib.sha256(await r.read()).hexdigest() == layer.digest
    blob_file(cache, layer.digest).unlink()
    registry_tap.clear()
    for _ in range(2):
        r = await mirror.get(url)
        body = await r.read()
        assert r.status == 200, body[:300]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
    assert registry_tap.count(method="GET", kind="blob") == 1, registry_tap.describe()
    assert blob_file(cache, layer.digest).exists()  # cached again
    r = await mirror.head(url)
    assert r.status == 200 and r.headers["Content-Length"] == str(layer.size)


async def test_zero_content_length_for_a_non_empty_digest_never_completes(
        aiohttp_client: ClientFactory, registry_tap: RecordingProxy, catalog: Catalog,
        tmp_path: Path) -> None:
    """An upstream that answers 200 with Content-Length 0 for a non-empty digest: no GET, Range
    GET or HEAD may complete (a zero-length body has no last byte to hold back until the
    digest verified); each gets the OCI error of a body that did not verify."""
    cache = tmp_path / "cache"
    mirror = await aiohttp_client(make_app({"docker.io": registry_tap.url}, cache,
                                           prefetch={"enabled": False}))
    layer = catalog["library/alpine-ish:3.19"].layers[0]
    registry_tap.set_fault(Fault("status", status=200, body=b"", match=f"/blobs/{layer.digest}"))
    url = f"/v2/library/alpine-ish/blobs/{layer.digest}"
    for method, headers in (("GET", {"Range": "bytes=0-99"}), ("GET", {}), ("HEAD", {})):
        r = await mirror.request(method, url, headers=headers)
        body = await r.read()
        assert r.status == 502, (method, headers, r.status, r.headers)
        if method == "GET":
            assert json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
    assert registry_tap.fault_hits >= 3
    assert not blob_file(cache, layer.digest).exists()
    registry_tap.clear_fault()  # the upstream recovers: the real bytes are served and cached
    r = await mirror.get(url)
    assert r.status == 200
    assert "sha256:" + hashlib.sha256(await r.read()).hexdigest() == layer.digest


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 2 MiB (tmpfs), to run out of space for real."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {proc.stderr.strip()}",
                    pytrace=False)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(path: Path) -> None:
    """Write to `path` until the file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def lost(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("mirror_index_writes_lost_total", {"reason": reason})
    return value or 0.0


async def test_index_writer_survives_a_full_disk(small_disk: Path) -> None:
    """SQLite rolls a transaction back by itself on SQLITE_FULL; the writer's own ROLLBACK then
    raised and ended the flusher, after which nothing more landed. The writer survives, counts
    the writes it lost, keeps its queue bounded, and writes again once there is room."""
    metrics = Metrics()
    db = Database(small_disk / "index.db", metrics, max_pending=500)
    await db.start()
    try:
        fill(small_disk / "filler")
        for i in range(400):  # more pages than the full disk has: the commit fails
            db.write("INSERT INTO tags (upstream, repo, tag, checked_at) VALUES (?, ?, ?, ?)",
                     ("u", "r" * 500, f"t{i}", 0.0))
        await until("the failed batch is counted", lambda: lost(metrics, "error") >= 400)
        for i in range(600):  # faster than any flush: the queue stays bounded
            db.write("INSERT INTO tags (upstream, repo, tag, checked_at) VALUES (?, ?, ?, ?)",
                     ("u", "q", f"o{i}", 0.0))
        assert lost(metrics, "overflow") == 100
        await until("the queue drained", lambda: db.backlog == 0)
        (small_disk / "filler").unlink()
        db.write("INSERT INTO tags (upstream, repo, tag, checked_at) VALUES (?, ?, ?, ?)",
                 ("u", "r", "after", 1.0))
        await until("a write lands after space came back", lambda: db.query_one(
            "SELECT checked_at FROM tags WHERE tag='after'") is not None)
    finally:
        await db.close()



async def test_commit_refuses_a_temp_path_that_names_another_file(tmp_path: Path) -> None:
    """The commit renames by path, and a download's .part name is fixed: if tmp/ was swept and
    another process made a new part at that name, the rename would publish bytes nobody
    verified. The commit checks that the path is still the file it hashed."""
    db = Database(tmp_path / "index.db")
    tier = DiskTier(tmp_path, db, 1 << 30, Metrics())
    tier.open_sync()
    data = b"verified bytes" * 1000
    digest = Digest.of(data)
    for replaced in (True, False):
        part = SharedPart(tier, digest, len(data))
        part.take_over_sync()
        part.write_sync(data)
        part.path.unlink()  # a sweep of tmp/ ...
        if replaced:  # ... and another process's new part of the same digest
            part.path.write_bytes(b"x" * len(data))
        with pytest.raises(CacheConflict):
            await tier.commit(part)
        assert not tier.path(digest).exists() and tier.entry(digest) is None
        part.path.unlink(missing_ok=True)
    db.close_sync()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_maintenance_commands_refuse_a_live_cache_dir(catalog: Catalog, tmp_path: Path) -> None:
    """`mirror gc`, `import` and `seed` sweep tmp/ and write behind a server's back: against a
    cache.dir a running server holds they stop with one clear line and touch nothing; once it
    stopped they run. A server does not start under a maintenance command either."""
    cache = tmp_path / "cache"
    cfg = mirror_config({"docker.io": catalog.registry_url}, cache)
    cfg_path = tmp_path / "mirror.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    with MirrorProcess(cfg, workdir=tmp_path / "serve"):
        in_use = cache / "tmp" / "sha256-0123.part"  # stands for a download in progress
        in_use.write_bytes(b"partial")
        for args in (("gc",), ("seed", "library/busybox:latest"),
                     ("import", str(tmp_path / "bundle.tar"))):
            r = cli(*args, "-c", str(cfg_path), cwd=tmp_path)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "is in use by a running mirror serve" in lines[0], lines
            assert f"before mirror {args[0]}" in lines[0]
            assert in_use.read_bytes() == b"partial"  # nothing swept
    r = cli("gc", "-c", str(cfg_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not in_use.exists()  # with no server, the sweep is the tool's to do
    with CacheDirLock.exclusive(cache, "this test"):
        server = MirrorProcess(cfg, workdir=tmp_path / "serve2")
        with pytest.raises(RuntimeError, match="in use by a maintenance command"):
            server.start()
