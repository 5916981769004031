"""One contract for every storage tier (mirror/cache/base.py BlobStore): store, stat, read with
ranges, delete, list, idempotent and concurrent writers of one digest. Run against the disk
tier, the object-store tier on a real S3 server (SeaweedFS on loopback) and on file://, and the
tiered combination (disk in front of S3)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.config import ObjectStoreConfig, Secret
from mirror.observe.metrics import Metrics
from mirror.oci.models import Digest
from mirror.store.base import BlobStore
from mirror.store.db import Database
from mirror.store.disk import DiskTier
from mirror.store.objectstore import ColdTier, build_store
from mirror.store.tiered import TieredStore
from tests.support.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3

MiB = 1 << 20
KINDS = ["disk", "s3", "file", "tiered"]


def s3_tier(seaweed: SeaweedS3) -> ColdTier:
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(bucket)
    return ColdTier(build_store(ObjectStoreConfig(
        url=f"s3://{bucket}/some/prefix", endpoint=seaweed.endpoint, region=REGION,
        access_key_id=ACCESS_KEY, secret_access_key=Secret(SECRET_KEY))))


@pytest.fixture
async def hot_db(tmp_path: Path) -> AsyncIterator[tuple[DiskTier, Database]]:
    db = Database(tmp_path / "hot" / "index.db")
    tier = DiskTier(tmp_path / "hot", db, 1 << 40, Metrics())
    tier.open_sync()
    await db.start()
    yield tier, db
    await db.close()


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path,
                hot_db: tuple[DiskTier, Database]) -> AsyncIterator[BlobStore]:
    kind = request.param
    hot, db = hot_db
    if kind == "disk":
        yield hot
    elif kind == "file":
        yield ColdTier(build_store(ObjectStoreConfig(url=f"file://{tmp_path / 'cold'}")))
    elif kind == "s3":
        yield s3_tier(request.getfixturevalue("seaweed"))
    else:
        tiers = TieredStore(hot, s3_tier(request.getfixturevalue("seaweed")), db, Metrics())
        await tiers.start()
        yield tiers
        await tiers.close()


def blob(tmp_path: Path, size: int, seed: str = "x") -> tuple[Digest, Path, bytes]:
    data = hashlib.shake_256(seed.encode()).digest(size)
    path = tmp_path / f"src-{seed}-{size}"
    path.write_bytes(data)
    return Digest.of(data), path, data


async def read_all(store: BlobStore, d: Digest, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in store.read(d, start, end)])


async def test_store_stat_read(store: BlobStore, tmp_path: Path) -> None:
    d, path, data = blob(tmp_path, 3 * MiB + 17)
    assert await store.stat(d) is None
    await store.put_file(d, path)
    assert await store.stat(d) == len(data)
    assert await read_all(store, d) == data


@pytest.mark.parametrize(("start", "end"), [(0, 0), (5, 9), (MiB - 1, MiB + 1), (100, None),
                                            (2 * MiB, 2 * MiB + 99), (2 * MiB + 16, None)])
async def test_read_ranges(store: BlobStore, tmp_path: Path, start: int, end: int | None) -> None:
    d, path, data = blob(tmp_path, 2 * MiB + 17, "range")
    await store.put_file(d, path)
    want = data[start:] if end is None else data[start:end + 1]
    assert await read_all(store, d, start, end) == want


async def test_delete(store: BlobStore, tmp_path: Path) -> None:
    d, path, _ = blob(tmp_path, 1000, "del")
    await store.put_file(d, path)
    assert await store.delete(d) is True
    assert await store.stat(d) is None
    assert await store.delete(d) is False
    assert d not in {x async for x, _ in store.list()}


async def test_list(store: BlobStore, tmp_path: Path) -> None:
    want: dict[Digest, int] = {}
    for i in range(3):
        d, path, data = blob(tmp_path, 1000 + i, f"list{i}")
        await store.put_file(d, path)
        want[d] = len(data)
    got = {d: size async for d, size in store.list()}
    assert got == want


async def test_put_is_idempotent(store: BlobStore, tmp_path: Path) -> None:
    d, path, data = blob(tmp_path, 4096, "idem")
    await store.put_file(d, path)
    await store.put_file(d, path)
    assert await store.stat(d) == len(data)
    assert [x async for x, _ in store.list()] == [d]


async def test_concurrent_writers_of_one_digest(store: BlobStore, tmp_path: Path) -> None:
    """Nodes (or fetches) racing to store the same content: one object, whole and right."""
    d, path, data = blob(tmp_path, 6 * MiB + 5, "race")
    copies = []
    for i in range(6):  # each writer has its own source file, as separate downloads would
        p = tmp_path / f"copy{i}"
        os.link(path, p)
        copies.append(p)
    await asyncio.gather(*(store.put_file(d, p) for p in copies))
    assert await store.stat(d) == len(data)
    assert hashlib.sha256(await read_all(store, d)).hexdigest() == d.hex
    assert [x async for x, _ in store.list()] == [d]


async def test_read_missing_raises(store: BlobStore, tmp_path: Path) -> None:
    d, _, _ = blob(tmp_path, 10, "missing")
    with pytest.raises(FileNotFoundError):
        await read_all(store, d)


# -- what only the tiered combination does ---------------------------------------------------


@pytest.fixture
async def tiered(tmp_path: Path, seaweed: SeaweedS3,
                 hot_db: tuple[DiskTier, Database]) -> AsyncIterator[TieredStore]:
    hot, db = hot_db
    tiers = TieredStore(hot, s3_tier(seaweed), db, Metrics())
    await tiers.start()
    yield tiers
    await tiers.close()


async def test_tiered_writes_behind_and_promotes_verified(tiered: TieredStore,
                                                          tmp_path: Path) -> None:
    d, path, data = blob(tmp_path, 2 * MiB, "promote")
    await tiered.put_file(d, path)
    assert await tiered.uploads.drain(30)
    assert await tiered.cold.stat(d) == len(data)
    await tiered.hot.delete(d)
    assert tiered.hot.entry(d) is None
    assert await read_all(tiered, d, 10, 19) == data[10:20]
    entry = tiered.hot.entry(d)
    assert entry is not None and entry.size == len(data)  # promoted back into the hot tier
    assert tiered.hot.path(d).read_bytes() == data


async def test_tiered_refuses_a_corrupt_cold_copy(tiered: TieredStore, tmp_path: Path) -> None:
    d, _, data = blob(tmp_path, 4096, "corrupt")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" + data[1:])
    await tiered.cold.put_file(d, bad)  # a broken node or disk wrote wrong bytes under d
    with pytest.raises(FileNotFoundError):
        await read_all(tiered, d)
    assert tiered.hot.entry(d) is None
    for _ in range(100):  # the bad copy is deleted in the background
        if await tiered.cold.stat(d) is None:
            break
        await asyncio.sleep(0.05)
    assert await tiered.cold.stat(d) is None


async def test_pending_uploads_survive_a_restart(tmp_path: Path, seaweed: SeaweedS3) -> None:
    cold = s3_tier(seaweed)
    d, path, data = blob(tmp_path, 1 * MiB, "restart")

    async def open_tiers() -> tuple[TieredStore, Database]:
        db = Database(tmp_path / "hot2" / "index.db")
        hot = DiskTier(tmp_path / "hot2", db, 1 << 40, Metrics())
        hot.open_sync()
        await db.start()
        return TieredStore(hot, cold, db, Metrics(), upload_concurrency=1), db

    tiers, db = await open_tiers()
    await tiers.hot.put_file(d, path)
    tiers.queue_blob(d)  # queued, but the process stops before any worker ran
    await db.close()
    assert db.path.exists()

    tiers, db = await open_tiers()
    rows = db.query("SELECT digest, kind FROM pending_uploads")
    assert rows == [(str(d), "blob")]
    await tiers.start()
    assert await tiers.uploads.drain(30)
    assert await cold.stat(d) == len(data)
    await db.flush()
    assert db.query("SELECT digest FROM pending_uploads") == []
    await tiers.close()
    await db.close()


async def test_failed_uploads_are_retried(tmp_path: Path, hot_db: tuple[DiskTier, Database],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The cold tier cannot be written at first (its directory is a file): the upload fails,
    is retried with backoff, and lands once the store works again."""
    hot, db = hot_db
    root = tmp_path / "cold"
    cold = ColdTier(build_store(ObjectStoreConfig(url=f"file://{root}")))
    root.rmdir()
    root.write_bytes(b"not a directory")
    metrics = Metrics()
    tiers = TieredStore(hot, cold, db, metrics)
    monkeypatch.setattr("mirror.store.uploads.RETRY_MIN", 0.05)
    await tiers.start()
    d, path, data = blob(tmp_path, 1000, "flaky")
    await tiers.put_file(d, path)
    errors = metrics.cold_uploads.labels("blob", "error")
    for _ in range(200):
        if errors._value.get() >= 2:
            break
        await asyncio.sleep(0.02)
    assert errors._value.get() >= 2
    assert tiers.uploads.pending() == 1
    root.unlink()
    root.mkdir()
    assert await tiers.uploads.drain(30)
    assert await cold.stat(d) == len(data)
    await tiers.close()


async def test_an_upload_whose_hot_file_another_worker_evicted_is_dropped(
        tmp_path: Path, hot_db: tuple[DiskTier, Database],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With server.workers, the worker keeping the budget deletes a file whose upload another
    worker queued: that upload has nothing left to copy ("gone"), it is not an error retried
    forever, and the tier's accounting forgets the file."""
    hot, db = hot_db
    cold = ColdTier(build_store(ObjectStoreConfig(url=f"file://{tmp_path / 'cold'}")))
    metrics = Metrics()
    tiers = TieredStore(hot, cold, db, metrics)
    monkeypatch.setattr("mirror.store.uploads.RETRY_MIN", 0.05)
    d, path, _ = blob(tmp_path, 1000, "evicted-elsewhere")
    await hot.put_file(d, path)  # queued; copied once the uploader starts
    hot.path(d).unlink()  # what the other worker's eviction does, behind this one's back
    await tiers.start()
    assert await tiers.uploads.drain(5), "the upload is retried instead of dropped"
    assert metrics.cold_uploads.labels("blob", "error")._value.get() == 0
    assert metrics.cold_uploads.labels("blob", "gone")._value.get() == 1
    assert hot.entry(d) is None and hot.used == 0
    assert await cold.stat(d) is None
    await tiers.close()


async def test_the_evictor_first_copies_what_another_worker_has_not_copied(
        tmp_path: Path) -> None:
    """With server.workers, the worker keeping the budget evicts a file another worker
    committed and has not copied to the cold tier yet: the evictor copies it first (from the
    shared pending_uploads), so evicted content can still come back from the cold tier."""
    root = tmp_path / "hot"
    dbs = [Database(root / "index.db") for _ in range(2)]
    primary = DiskTier(root, dbs[0], 1 << 40, Metrics())
    other = DiskTier(root, dbs[1], 1 << 40, Metrics(), evicting=False)
    for t, db in zip((primary, other), dbs, strict=True):
        t.open_sync(sweep=False)
        await db.start()
    cold = ColdTier(build_store(ObjectStoreConfig(url=f"file://{tmp_path / 'cold'}")))
    evictor = TieredStore(primary, cold, dbs[0], Metrics())
    TieredStore(other, cold, dbs[1], Metrics())  # never started: its copy stays pending
    await evictor.start()
    d, path, data = blob(tmp_path, 5000, "pending-elsewhere")
    await other.put_file(d, path)
    await dbs[1].flush()
    primary.learn(d, len(data))  # what its catch-up with the index does
    assert await primary.evict(0) == (1, len(data))
    assert not primary.path(d).exists()
    assert await cold.stat(d) == len(data)
    await evictor.close()
    for db in dbs:
        await db.close()


async def test_disk_tier_rebuilds_accounting_from_disk(tmp_path: Path) -> None:
    """After a crash or a lost index, start-up counts what is really on disk: files removed
    behind its back are forgotten, files it never recorded are adopted, temp files swept."""
    root = tmp_path / "hot"
    db = Database(root / "index.db")
    tier = DiskTier(root, db, 1 << 40, Metrics())
    tier.open_sync()
    await db.start()
    blobs = [blob(tmp_path, 1000 * (i + 1), f"acct{i}") for i in range(3)]
    for d, path, _ in blobs:
        await tier.put_file(d, path)
    assert tier.used == 6000
    await db.close()

    tier.path(blobs[0][0]).unlink()  # deleted while the mirror was stopped
    (root / "index.db").unlink()  # and the index lost as well
    for extra in root.glob("index.db-*"):
        extra.unlink()
    (root / "tmp" / "half-done").write_bytes(b"x" * 500)

    db = Database(root / "index.db")
    metrics = Metrics()
    tier = DiskTier(root, db, 1 << 40, metrics)
    tier.open_sync()
    assert tier.used == 5000
    assert {str(d) async for d, _ in tier.list()} == {str(blobs[1][0]), str(blobs[2][0])}
    assert list((root / "tmp").iterdir()) == []
    assert metrics.cache_bytes.labels("hot")._value.get() == 5000
    assert db.query("SELECT COUNT(*) FROM content") == [(2,)]
    db.close_sync()
