"""The tiers as mirror/pull/stack.py wires them (build_storage): every commit is copied to the
cold tier behind the client's back, cold content is verified before the hot tier takes it,
uploads survive restarts and failures, the evictor finishes any worker's pending upload before
it deletes, and a cold tier that does not answer is skipped within its lookup timeout."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mirror.config import Config, parse_config
from mirror.observe.metrics import Metrics
from mirror.oci.errors import VerificationError
from mirror.oci.models import Digest
from mirror.pull.stack import Storage, build_storage
from mirror.store.db import Database
from mirror.store.index import TagIndex
from tests.store.conftest import MiB, blob, commit_bytes, until
from tests.support.seaweed import SeaweedS3


def config(cache: Path, object_store: dict[str, Any]) -> Config:
    return parse_config({"upstreams": {"docker.io": {"url": "http://127.0.0.1:9"}},
                         "cache": {"dir": str(cache), "max_size": "1GiB",
                                   "object_store": object_store}},
                        env=SeaweedS3.env())


def seaweed_store(seaweed: SeaweedS3, **extra: Any) -> dict[str, Any]:
    bucket = f"tiered-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(bucket)
    return seaweed.mirror_config(bucket, **extra)


class Opened:
    def __init__(self, storage: Storage, db: Database, metrics: Metrics) -> None:
        self.storage, self.db, self.metrics = storage, db, metrics

    @property
    def tiers(self) -> Any:
        assert self.storage.tiers is not None
        return self.storage.tiers

    async def close(self) -> None:
        await self.tiers.close()
        await self.db.close()


async def open_storage(cfg: Config, start: bool = True) -> Opened:
    db = Database(cfg.cache.dir / "index.db")
    metrics = Metrics()
    storage = build_storage(cfg, db, TagIndex(db), metrics, evicting=True)
    storage.tier.open_sync()
    await db.start()
    opened = Opened(storage, db, metrics)
    if start:
        await opened.tiers.start()
    return opened


@pytest.fixture
async def opened(tmp_path: Path, seaweed: SeaweedS3) -> AsyncIterator[Opened]:
    o = await open_storage(config(tmp_path / "hot", seaweed_store(seaweed)))
    yield o
    await o.close()


async def test_commits_are_written_behind_and_read_back_verified(opened: Opened,
                                                                 tmp_path: Path) -> None:
    tier, tiers = opened.storage.tier, opened.tiers
    d, _, data = blob(tmp_path, 2 * MiB, "behind")
    await commit_bytes(tier, d, data)
    assert await tiers.uploads.drain(30)
    assert await tiers.cold.stat(d) == len(data)
    await tier.delete(d)
    # Read-through as the fetcher does it: fill a hot temp file from the cold tier, commit.
    temp = tier.new_temp(d, len(data))
    sizes: list[int] = []
    assert await tiers.fill(d, temp, sizes.append, lambda _: None)
    await tier.commit(temp)
    assert sizes == [len(data)] and tier.path(d).read_bytes() == data


async def test_a_corrupt_cold_copy_is_refused_and_deleted(opened: Opened, tmp_path: Path) -> None:
    tier, tiers = opened.storage.tier, opened.tiers
    d, _, data = blob(tmp_path, 4096, "corrupt")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" + data[1:])
    await tiers.cold.put_file(d, bad)  # a broken node or disk wrote wrong bytes under d
    temp = tier.new_temp(d, None)
    assert await tiers.fill(d, temp, lambda _: None, lambda _: None)
    with pytest.raises(VerificationError):
        await tier.commit(temp)
    tiers.discard_cold(d)  # what the fetcher does on that error
    assert tier.entry(d) is None
    for _ in range(100):  # the bad copy is deleted in the background
        if await tiers.cold.stat(d) is None:
            break
        await asyncio.sleep(0.05)
    assert await tiers.cold.stat(d) is None


async def test_pending_uploads_survive_a_restart(tmp_path: Path, seaweed: SeaweedS3) -> None:
    cfg = config(tmp_path / "hot", seaweed_store(seaweed))
    d, _, data = blob(tmp_path, 1 * MiB, "restart")
    first = await open_storage(cfg, start=False)  # stops before any upload worker ran
    await commit_bytes(first.storage.tier, d, data)
    await first.db.close()
    second = await open_storage(cfg, start=False)
    assert second.db.query("SELECT digest, kind FROM pending_uploads") == [(str(d), "blob")]
    await second.tiers.start()
    assert await second.tiers.uploads.drain(30)
    assert await second.tiers.cold.stat(d) == len(data)
    await second.db.flush()
    assert second.db.query("SELECT digest FROM pending_uploads") == []
    await second.close()


async def test_failed_uploads_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cold tier cannot be written at first (its directory is a file): the upload fails,
    is retried with backoff, and lands once the store works again."""
    root = tmp_path / "cold"
    monkeypatch.setattr("mirror.store.uploads.RETRY_MIN", 0.05)
    o = await open_storage(config(tmp_path / "hot", {"url": f"file://{root}"}))
    root.rmdir()
    root.write_bytes(b"not a directory")
    d, _, data = blob(tmp_path, 1000, "flaky")
    await commit_bytes(o.storage.tier, d, data)
    errors = o.metrics.cold_uploads.labels("blob", "error")
    await until("two failed attempts", lambda: errors._value.get() >= 2)
    assert o.tiers.uploads.pending() == 1
    root.unlink()
    root.mkdir()
    assert await o.tiers.uploads.drain(30)
    assert await o.tiers.cold.stat(d) == len(data)
    await o.close()


async def test_the_guard_finishes_an_upload_another_worker_queued(opened: Opened,
                                                                  tmp_path: Path) -> None:
    """server.workers: each worker queues what it commits; the one that evicts must see those
    rows too, and copy the file (on the shared disk) before deleting it."""
    tier, tiers = opened.storage.tier, opened.tiers
    d, _, data = blob(tmp_path, 3000, "other")
    await commit_bytes(tier, d, data)
    assert await tiers.uploads.drain(30)
    await tiers.cold.delete(d)
    # Another worker's queue entry: only the database row, nothing in this process.
    opened.db.write_now([("INSERT INTO pending_uploads (digest, kind, queued_at) VALUES (?,?,?)",
                          (str(d), "blob", time.time()))])
    assert tiers.uploads.is_pending(str(d))
    assert await tiers.uploads.ensure(str(d), 30)
    assert await tiers.cold.stat(d) == len(data)
    await opened.db.flush()
    assert not tiers.uploads.is_pending(str(d))


async def test_a_cold_tier_that_does_not_answer_is_skipped(tmp_path: Path) -> None:
    """An S3 endpoint that accepts connections and never answers (a stopped object store):
    a lookup on the request path gives up after lookup_timeout, and the next ones do not wait
    at all for a while."""
    stalled = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await stalled.wait()
        return web.Response(status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    o = await open_storage(config(tmp_path / "hot", {
        "url": "s3://stalled/x", "endpoint": f"http://127.0.0.1:{port}", "region": "us-east-1",
        "access_key_id": "k", "secret_access_key_env": "MIRROR_TEST_S3_SECRET",
        "lookup_timeout": "300ms"}))
    d = Digest.of(b"nothing")
    started = time.monotonic()
    assert await o.tiers.fill(d, o.storage.tier.new_temp(d, None), lambda _: None,
                              lambda _: None) is False
    first = time.monotonic() - started
    started = time.monotonic()
    assert await o.tiers.manifest(d) is None
    assert await o.tiers.tag("docker.io", "library/x", "1") is None
    rest = time.monotonic() - started
    assert 0.25 < first < 2.0, first
    assert rest < 0.1, rest
    assert o.metrics.cold_skips._value.get() == 1
    stalled.set()
    await o.tiers.close()
    await o.db.close()
    await runner.cleanup()
